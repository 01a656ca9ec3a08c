"""The one JSON contract (docs/json.md): every command's `--json` document names its schema and passes
schemas/<command>.json, addresses are integers everywhere, and a failure under `--json` is one error
document on stdout beside one `error:` line on stderr. Real samples, real commands, real outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))

from json_contract import check_document, check_error_document, schema_files  # noqa: E402
from sample_corpus import SAMPLES_DIR, build_corpus  # noqa: E402

from hpkg.cli import COMMAND_MODULES  # noqa: E402

SAMPLE = SAMPLES_DIR / "01-bounds-check" / "out"
REFUSED_SAMPLE = SAMPLES_DIR / "12-global-initializer" / "out"
TIMEOUT = 300  # a safety net against a hang, not a timing assertion


def hpkg(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpkg", *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT
    )


def document(*args: object) -> dict:
    """A successful `--json` run's document, checked against its command's schema."""
    run = hpkg(*args, "--json")
    assert run.returncode == 0, run.stderr
    check_document(json.loads(run.stdout), str(args[0]))
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_corpus()
    directory = tmp_path_factory.mktemp("json-contract")
    shutil.copy2(SAMPLE / "baseline", directory / "baseline")
    shutil.copy2(SAMPLE / "fixed", directory / "fixed")
    return directory


def test_every_command_takes_json_and_has_a_schema_file() -> None:
    names = {path.stem for path in schema_files()}
    for command in COMMAND_MODULES:
        assert command in names, f"schemas/{command}.json is missing"
        assert "--json" in hpkg(command, "--help").stdout, f"hpkg {command} has no --json"


def test_file_commands_print_documents_their_schemas_accept_with_one_address_spelling(work: Path) -> None:
    keys = document("keygen", work / "release")
    assert keys["public_key"] == f"{work / 'release'}.pub" and len(keys["key_id"]) > 0
    built = document("build", work / "baseline", work / "fixed", "-o", work / "fix.hpkg",
                     "--key", work / "release")  # fmt: skip
    for side in ("old", "new"):
        identity = built[side]
        assert identity["path"] == str(work / ("baseline" if side == "old" else "fixed"))
        assert len(identity["build_id"]) == 40 and len(identity["sha256"]) == 64
    assert built["baseline_build_id"] == built["old"]["build_id"]
    inspected = document("inspect", work / "fix.hpkg")
    assert inspected["kind"] == "package" and inspected["package_id"] == built["package_id"]
    verified = document("verify", work / "fix.hpkg", "--key", f"{work / 'release'}.pub", "--against",
                        work / "baseline")  # fmt: skip
    assert verified["signature"] == "ok" and verified["against"]["build_id"] == built["old"]["build_id"]
    assert document("verify", work / "fix.hpkg")["signature"] == "not-checked"
    diffed = document("diff", work / "baseline", work / "fixed")
    assert diffed["old"] == built["old"] and diffed["new"] == built["new"]
    # One function, one address, whichever command reports it: an integer link address everywhere.
    function = inspected["functions"][0]
    (entry,) = [e for e in diffed["changed"] if e["name"] == function["name"]]
    (site,) = [s for s in verified["against"]["sites"] if s["function"] == function["name"]]
    assert entry["old_address"] == function["baseline_address"] == site["link_address"]
    assert site["sha256"] == "ok" and site["state"] == "pre-image"
    one = document("diff", work / "baseline", work / "fixed", "--function", function["name"])
    assert one["function"]["name"] == function["name"] and one["function"]["unified_diff"]

    applied = document("apply", work / "fix.hpkg", "--key", f"{work / 'release'}.pub",
                       "--file", work / "baseline", "-o", work / "patched")  # fmt: skip
    assert [s["function"] for s in applied["patch_sites"]] == [f["name"] for f in inspected["functions"]]
    carried = document("inspect", work / "patched")
    assert carried["kind"] == "patched-file" and carried["build_id"] == built["old"]["build_id"]
    assert [(p["package_id"], p["functions"]) for p in carried["packages"]] == [
        (built["package_id"], [f["name"] for f in inspected["functions"]])
    ]
    assert applied["changed"] is True
    again = document("apply", work / "fix.hpkg", "--key", f"{work / 'release'}.pub",
                     "--file", work / "patched", "-o", work / "again")  # fmt: skip
    assert again["changed"] is False and again["already_applied"]["package_id"] == built["package_id"]
    carrying = document("verify", work / "fix.hpkg", "--key", f"{work / 'release'}.pub", "--against",
                        work / "patched")  # fmt: skip
    assert carrying["against"]["already_applied"] == again["already_applied"]
    text = hpkg("inspect", work / "patched")
    assert text.returncode == 0 and built["package_id"] in text.stdout and "magic" not in text.stdout
    unpatched = hpkg("inspect", work / "baseline", "--json")
    error = check_error_document(unpatched.stdout, "inspect", 3, "invalid-package")["error"]
    assert "carries none" in error["message"]


@pytest.mark.parametrize(
    ("argv", "exit_code", "code"),
    [
        (("diff", "/nonexistent/old", "{baseline}"), 3, "invalid-binary"),
        (("inspect", "{baseline}.txt"), 3, "invalid-package"),
        (("status", "--pid", "0"), 2, "usage"),
        (("status", "--pid", "1", "--pid", "2"), 2, "usage"),
        (("verify", "{baseline}", "--no-such-option"), 2, "usage"),
        (("diff", "{baseline}", "{baseline}", "--function", "no_such_function"), 2, "usage"),
        (("keygen", "{baseline}"), 2, "usage"),
    ],
    ids=["missing-binary", "not-a-package", "bad-pid", "repeated-pid", "unknown-option", "unknown-function",
         "keygen-exists"],
)
def test_a_failure_under_json_is_one_error_document_and_one_error_line(
    work: Path, argv: tuple[str, ...], exit_code: int, code: str
) -> None:
    (work / "baseline.txt").write_text("not a package\n")
    run = hpkg(*(a.format(baseline=work / "baseline") for a in argv), "--json")
    assert run.returncode == exit_code, run.stderr
    error = check_error_document(run.stdout, argv[0], exit_code, code)["error"]
    assert run.stderr == f"error: {error['message']}\n"
    plain = hpkg(*(a.format(baseline=work / "baseline") for a in argv))
    assert (plain.returncode, plain.stdout, plain.stderr) == (exit_code, "", run.stderr)


def test_a_refused_build_under_json_carries_its_reasons_inputs_and_the_allow_that_accepts_them(
    tmp_path: Path,
) -> None:
    build_corpus()
    old, new = REFUSED_SAMPLE / "baseline", REFUSED_SAMPLE / "fixed"
    run = hpkg("build", old, new, "-o", tmp_path / "p.hpkg", "--json")
    document = check_error_document(run.stdout, "build", 4, "not-hot-patchable")
    assert document["verdict"] == "refused" and document["old"]["path"] == str(REFUSED_SAMPLE / "baseline")
    (reason,) = document["error"]["reasons"]
    assert reason.startswith("data-value-changed: ")
    assert reason.endswith("(accept with --allow data-value-changed)")
    assert run.stderr.splitlines() == [f"error: {document['error']['message']}", f"  - {reason}"]


def test_options_work_after_the_command_and_verbose_adds_detail(work: Path) -> None:
    quiet = hpkg("build", work / "baseline", work / "fixed", "-o", work / "q.hpkg", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    verbose = hpkg("diff", work / "baseline", work / "fixed", "-v")
    build_id = json.loads(hpkg("diff", work / "baseline", work / "fixed", "--json").stdout)["old"]["build_id"]
    assert verbose.returncode == 0 and f"old: {work / 'baseline'} (build-id {build_id}" in verbose.stderr
    assert hpkg("diff", work / "baseline", work / "fixed").stderr == ""
    assert hpkg("-q", "diff", work / "baseline", work / "fixed").returncode == 0


def test_allow_help_names_every_overridable_code_in_user_terms() -> None:
    from hpkg.builder.verdict import OVERRIDABLE

    shown = "".join(hpkg("build", "--help").stdout.split())  # help text wraps lines at hyphens
    for code in OVERRIDABLE:
        assert f"{code}:" in shown
    assert "hpkg.builder" not in shown
