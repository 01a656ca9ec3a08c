"""`--json` documents are written in pieces (a large library's diff lists hundreds of thousands of
functions): the text is exactly what `json.dumps(document, indent=2)` gives, lists given as iterators
included, so scripts that read the output see no difference."""

from __future__ import annotations

import json

import pytest

from hpkg.cli.app import json_pieces

DOCUMENTS = [
    {},
    {"mode": "relocations"},
    {"changed": [], "added": [{"name": "f", "old_size": 3}], "data": [{"name": "a\nb", "change": "x"}]},
    {"changed": [{"name": "g", "nested": {"k": [1, 2]}}, {"name": "h"}], "unchanged_count": 7, "n": None},
    [1, {"a": []}],
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_pieces_join_to_the_standard_indented_text(document):
    assert "".join(json_pieces(document)) == json.dumps(document, indent=2)


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if isinstance(d, dict)])
def test_an_iterator_is_written_as_the_list_it_yields(document):
    lazy = {key: iter(value) if isinstance(value, list) else value for key, value in document.items()}
    assert "".join(json_pieces(lazy)) == json.dumps(document, indent=2)
