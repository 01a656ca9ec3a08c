"""Checks a document printed by `hpkg … --json` against its JSON Schema (schemas/<command>.json).

The schema is chosen by the document's own `schema` field (`hpkg.<command>/1`), so a document with a
missing or misspelt schema name fails here too. Shared by the contract tests of every command.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
_SCHEMA_NAME = re.compile(r"hpkg\.([a-z]+)/1")


@cache
def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMAS_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def check_document(document: Any, command: str | None = None) -> str:
    """Validate `document` against the schema its `schema` field names (which must be `command`'s, when
    given); return the command name. jsonschema's ValidationError says what does not hold."""
    assert isinstance(document, dict), document
    match = _SCHEMA_NAME.fullmatch(str(document.get("schema")))
    assert match, f"no hpkg schema name: {document.get('schema')!r}"
    if command is not None:
        assert match.group(1) == command, document["schema"]
    schema = _registry().get_or_retrieve(f"urn:hpkg:schema:{match.group(1)}").value.contents
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    validator.validate(document)
    return match.group(1)


def check_error_document(stdout: str, command: str, exit_code: int, code: str | None = None) -> dict:
    """The one error document of a failed `--json` run: its schema, exit and (when given) code."""
    document = json.loads(stdout)
    check_document(document, command)
    error = document["error"]
    assert error["exit"] == exit_code, error
    if code is not None:
        assert error["code"] == code, error
    return document


def schema_files() -> list[Path]:
    return sorted(SCHEMAS_DIR.glob("*.json"))
