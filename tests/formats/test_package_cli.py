"""`hpkg keygen`, `hpkg inspect` and `hpkg verify`: outputs, exit codes and one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from package_crafting import assemble, flip, split

from hpkg.cli import main
from hpkg.errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from hpkg.formats import Package, key_id, load_private_key, load_public_key, read_package, write_package


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `hpkg ARGS` in-process through the real entry point; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return exit_info.value.code, out, err


def assert_one_error_line(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.fixture()
def keypair(tmp_path: Path, capsys) -> Path:
    path = tmp_path / "signing.key"
    code, out, _ = run_cli(capsys, "keygen", str(path))
    assert code == EXIT_OK
    return path


@pytest.fixture()
def package_files(tmp_path: Path, real_package: Package, keypair: Path) -> dict[str, Path]:
    files = {"unsigned": tmp_path / "u.hpkg", "signed": tmp_path / "s.hpkg"}
    files["unsigned"].write_bytes(write_package(real_package))
    files["signed"].write_bytes(write_package(real_package, load_private_key(keypair)))
    return files


def test_keygen_writes_a_private_key_0600_and_a_public_key(keypair: Path, capsys) -> None:
    public = Path(f"{keypair}.pub")
    assert stat.S_IMODE(keypair.stat().st_mode) == 0o600
    assert public.exists()
    assert b"PRIVATE KEY" in keypair.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert load_private_key(keypair).public_key() == load_public_key(public)


def test_keygen_refuses_to_overwrite_without_force(keypair: Path, capsys) -> None:
    before = keypair.read_bytes()
    code, _, err = run_cli(capsys, "keygen", str(keypair))
    assert code == EXIT_USAGE
    assert_one_error_line(err)
    assert "already exists" in err and "--force" in err
    assert keypair.read_bytes() == before
    keypair.chmod(0o644)
    code, out, _ = run_cli(capsys, "keygen", "--force", str(keypair))
    assert code == EXIT_OK
    assert keypair.read_bytes() != before
    assert stat.S_IMODE(keypair.stat().st_mode) == 0o600
    assert out.strip() == f"key id {key_id(load_public_key(f'{keypair}.pub')).hex()}"


def test_keygen_into_a_missing_directory_is_one_error_line(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "keygen", str(tmp_path / "absent" / "k"))
    assert code == EXIT_USAGE
    assert_one_error_line(err)


def test_inspect_json_has_the_documented_fields(package_files, real_package: Package, keypair: Path,
                                                capsys) -> None:
    code, out, _ = run_cli(capsys, "inspect", "--json", str(package_files["signed"]))
    assert code == EXIT_OK
    document = json.loads(out)
    assert document["format_version"] == "1.0"
    assert document["target"]["build_id"] == real_package.target.build_id.hex()
    assert document["target"]["machine"] == "x86_64"
    assert document["patch_level"] == 2 and document["package_id"] == "fmt-test-2"
    assert document["supersedes"] == "fmt-test-1"
    keys = ("name", "baseline_address", "baseline_size", "code_size")
    shown = [tuple(f[k] for k in keys) for f in document["functions"]]
    assert shown == [tuple(getattr(f, k) for k in keys) for f in real_package.functions]
    assert [f["name"] for f in document["added_functions"]] == ["clamp"]
    assert document["relocations"] == real_package.relocation_counts_by_kind()
    assert sum(document["relocations"].values()) == len(real_package.relocations)
    assert document["signed"] is True
    assert document["key_id"] == key_id(load_public_key(f"{keypair}.pub")).hex()
    assert document["compressed_size"] < document["uncompressed_size"]


def test_inspect_summary_names_what_matters(package_files, real_package: Package, capsys) -> None:
    code, out, _ = run_cli(capsys, "inspect", str(package_files["unsigned"]))
    assert code == EXIT_OK
    assert real_package.target.build_id.hex() in out
    assert "patch level 2, supersedes fmt-test-1" in out
    for f in real_package.functions:
        assert f"{f.baseline_address:#014x}  {f.name}  {f.baseline_size} -> {f.code_size} bytes" in out
    assert "R_X86_64_PLT32" in out and "IMPORT" in out
    assert "signature  unsigned" in out


def test_verify_exit_codes(package_files, keypair: Path, tmp_path: Path, capsys) -> None:
    public = f"{keypair}.pub"
    code, out, _ = run_cli(capsys, "verify", str(package_files["signed"]), "--key", public)
    assert code == EXIT_OK and "signature: ok" in out
    code, out, _ = run_cli(capsys, "verify", str(package_files["signed"]))
    assert code == EXIT_OK and "signature: not checked" in out
    code, out, _ = run_cli(capsys, "verify", str(package_files["unsigned"]))
    assert code == EXIT_OK and "signature: none" in out

    other = tmp_path / "other.key"
    run_cli(capsys, "keygen", str(other))
    failures = {
        "wrong key": ("verify", str(package_files["signed"]), "--key", f"{other}.pub"),
        "unsigned with key": ("verify", str(package_files["unsigned"]), "--key", public),
        "missing file": ("verify", str(tmp_path / "absent.hpkg")),
        "not a package": ("verify", public),
        "unreadable key": ("verify", str(package_files["signed"]), "--key", str(tmp_path / "absent.pub")),
    }
    for what, args in failures.items():
        code, out, err = run_cli(capsys, *args)
        assert code == EXIT_INVALID, what
        assert_one_error_line(err)
        assert out == "", what


def test_tampered_and_truncated_packages_fail_inspect_and_verify(package_files, capsys) -> None:
    blob = package_files["unsigned"].read_bytes()
    fields, document, frame, _ = split(blob)
    fields[1] = 2
    cases = {
        "truncated": blob[: len(blob) // 3],
        "extended": blob + b"garbage",
        "flipped": flip(blob, len(blob) - 10),
        "future-major": assemble(fields, document, frame),
    }
    for name, content in cases.items():
        path = package_files["unsigned"].with_name(f"{name}.hpkg")
        path.write_bytes(content)
        for command in ("inspect", "verify"):
            code, out, err = run_cli(capsys, command, str(path))
            assert code == EXIT_INVALID, (name, command)
            assert_one_error_line(err)
    assert "unsupported .hpkg format version 2." in err


def test_installed_entry_point_runs_inspect_and_verify(package_files) -> None:
    # One run through a real process, the way users and CI call it.
    path = str(package_files["signed"])
    command = [sys.executable, "-m", "hpkg", "inspect", "--json", path]
    inspect = subprocess.run(command, capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["signed"] is True
    loaded = read_package(package_files["signed"].read_bytes())
    assert json.loads(inspect.stdout)["file_size"] == loaded.file_size
