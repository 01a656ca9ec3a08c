"""`hpkg diff|build OLD.deb NEW.deb`: every ELF file of two versions of a Debian package, paired by path.

Both packages (and their -dbgsym packages, whose build-id tree supplies symbols) are unpacked into one
private temporary directory (hpkg.cli.debian), removed afterwards. Each ELF path is then one entry:
"changed" (diff) or "built" / "refused" / "no-change" (build), "unchanged" (same bytes), "added" or
"removed" (in one version only: nothing to patch in running processes), "unreadable" (an ELF hpkg does
not read, such as an object file or another architecture: one line why).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hpkg.cli.app import Application
from hpkg.cli.debian import UnpackedDeb, debug_root, unpacked
from hpkg.cli.debug_files import debuginfod_fetch
from hpkg.errors import EXIT_NO_CHANGE, EXIT_REFUSED, ImageError, NoChange, UnsupportedChange

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hpkg.builder.model import Image
    from hpkg.builder.plan import PlanOptions


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pairs(old: UnpackedDeb, new: UnpackedDeb) -> list[tuple[str, str]]:
    """Every ELF path of either package with what is known before diffing: "both", "added", "removed"."""
    old_files, new_files = set(old.elf_files), set(new.elf_files)
    status = {p: "both" for p in old_files & new_files}
    status.update({p: "removed" for p in old_files - new_files})
    status.update({p: "added" for p in new_files - old_files})
    return sorted(status.items())


def _entry(path: str, status: str, **facts: Any) -> dict[str, Any]:
    return {"path": path, "status": status, **facts}


class _PairLoader:
    """Loads the two images of one path, symbols from the -dbgsym trees, installed files or debuginfod."""

    def __init__(self, old_dbg: UnpackedDeb | None, new_dbg: UnpackedDeb | None, no_debuginfod: bool) -> None:
        from hpkg.builder.image import DEBUG_ROOTS

        self.roots = (*debug_root(old_dbg), *debug_root(new_dbg), *DEBUG_ROOTS)
        self.fetch = debuginfod_fetch(no_debuginfod)

    def load(self, old_path: str, new_path: str) -> tuple[Image, Image]:
        from hpkg.builder.image import load_image

        return load_image(old_path, None, self.roots, self.fetch), load_image(new_path, None, self.roots,
                                                                               self.fetch)


def _deb_facts(old: UnpackedDeb, new: UnpackedDeb, old_dbg: UnpackedDeb | None,
               new_dbg: UnpackedDeb | None) -> dict[str, Any]:
    return {
        "old": old.identity(), "new": new.identity(),
        "old_dbgsym": old_dbg.identity() if old_dbg else None,
        "new_dbgsym": new_dbg.identity() if new_dbg else None,
    }


def _check_same_package(app: Application, old: UnpackedDeb, new: UnpackedDeb) -> None:
    if old.package != new.package:
        app.warning(f"OLD is {old.package} and NEW is {new.package}: pairing their ELF files by path anyway")


def _changed_images(
    old: UnpackedDeb, new: UnpackedDeb, loader: _PairLoader, entries: list[dict[str, Any]]
) -> Iterator[tuple[str, Image, Image]]:
    """The ELF paths of both packages whose bytes differ, loaded; every other path (added, removed,
    byte-identical, unreadable) goes to `entries` with its status as the pairs are walked."""
    for path, known in _pairs(old, new):
        if known != "both":
            entries.append(_entry(path, known))
            continue
        old_path, new_path = old.path_of(path), new.path_of(path)
        if _sha256(old_path) == _sha256(new_path):
            entries.append(_entry(path, "unchanged"))
            continue
        try:
            old_image, new_image = loader.load(old_path, new_path)
        except ImageError as exc:
            entries.append(_entry(path, "unreadable", reason=_relative_message(exc, old, new)))
            continue
        yield path, old_image, new_image


def diff_debs(app: Application, old_deb: str, new_deb: str, old_dbgsym: str | None, new_dbgsym: str | None,
              no_debuginfod: bool, as_json: bool) -> None:
    """The diff of every ELF path of two .deb files: a table (or one JSON document)."""
    from hpkg.cli.diff import diff_document, diff_loaded

    with unpacked(old_deb, new_deb, old_dbgsym, new_dbgsym) as (old, new, old_dbg, new_dbg):
        assert old is not None and new is not None
        _check_same_package(app, old, new)
        loader = _PairLoader(old_dbg, new_dbg, no_debuginfod)
        entries: list[dict[str, Any]] = []
        for path, old_image, new_image in _changed_images(old, new, loader, entries):
            result = diff_loaded(app, old_image, new_image, False)
            document = diff_document(result, old_image, new_image)
            for side in ("old", "new"):
                document[side] = {**document[side], "path": path, "debug_file": _in_deb(
                    document[side]["debug_file"], (old_dbg, new_dbg))}
            changed = result.changed or result.added or result.removed or result.data_changes
            entries.append(_entry(path, "changed" if changed else "unchanged", diff=document))
        document = {**_deb_facts(old, new, old_dbg, new_dbg), "files": entries}
    if as_json:
        app.display_json(document)
        return
    _print_files(app, document, "diff")


def build_debs(app: Application, old_deb: str, new_deb: str, output_dir: str, old_dbgsym: str | None,
               new_dbgsym: str | None, no_debuginfod: bool, options: PlanOptions,
               signing_key: Ed25519PrivateKey | None, as_json: bool) -> None:
    """One package per changed ELF path in `output_dir`, or its refusal; a summary; exit 4 when any ELF
    needs a restart (the other packages are written), 5 when no ELF changed."""
    from hpkg.cli.build import build_document, build_loaded, report_built

    directory = _output_directory(output_dir)
    with unpacked(old_deb, new_deb, old_dbgsym, new_dbgsym) as (old, new, old_dbg, new_dbg):
        assert old is not None and new is not None
        _check_same_package(app, old, new)
        loader = _PairLoader(old_dbg, new_dbg, no_debuginfod)
        entries: list[dict[str, Any]] = []
        for path, old_image, new_image in _changed_images(old, new, loader, entries):
            try:
                result = build_loaded(app, old_image, new_image, options, signing_key, False)
            except UnsupportedChange as exc:
                entries.append(_entry(path, "refused", reason=str(exc), reasons=list(exc.reasons)))
                continue
            except NoChange as exc:
                entries.append(_entry(path, "no-change", reason=str(exc)))
                continue
            output = str(directory / (path.replace("/", "_") + ".hpkg"))
            report_built(app, result, output, signing_key, f"{path}: ")
            built = build_document(result, output, old_image, new_image)
            for side in ("old", "new"):
                built[side] = {**built[side], "path": path,
                               "debug_file": _in_deb(built[side]["debug_file"], (old_dbg, new_dbg))}
            entries.append(_entry(path, "built", output=output, package_id=built["package_id"], build=built))
        document = {**_deb_facts(old, new, old_dbg, new_dbg), "output_directory": str(directory),
                    "files": entries}
    counts = {status: sum(e["status"] == status for e in entries) for status in _BUILD_STATUSES}
    document["counts"] = counts
    if counts["refused"]:
        refused = [e["path"] for e in entries if e["status"] == "refused"]
        message = (f"{counts['refused']} ELF file{'s' * (counts['refused'] != 1)} need a restart (not"
                   f" hot-patchable): {', '.join(refused)}; {counts['built']} package(s) written")
        _finish(app, document, as_json, message, EXIT_REFUSED, UnsupportedChange.code)
    if not counts["built"]:
        _finish(app, document, as_json, "nothing to patch: no ELF file of the package changed in code",
                EXIT_NO_CHANGE, NoChange.code)
    _finish(app, document, as_json)


_BUILD_STATUSES = ("built", "refused", "no-change", "unchanged", "added", "removed", "unreadable")


def _finish(app: Application, document: dict[str, Any], as_json: bool, message: str | None = None,
            exit_code: int = 0, code: str = "") -> None:
    """Print the summary (text or JSON); a failure is the error document carrying the same summary."""
    if message is not None:
        if not as_json:
            _print_files(app, document, "build")
        app.fail(message, exit_code, code, extra=document)
    if as_json:
        app.display_json(document)
        return
    _print_files(app, document, "build")


def _output_directory(output: str):
    """`-o DIR` for .deb inputs: an existing directory or a new one (not a file, not a symlink)."""
    from pathlib import Path

    import click

    path = Path(output)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise click.BadParameter(f"{output} is not a directory; with .deb inputs -o names the directory"
                                 " the packages go to", param_hint="'-o'")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from hpkg.errors import TargetError

        raise TargetError(f"cannot create {output}: {exc.strerror or exc}") from None
    return path


def _in_deb(debug_file: str | None, dbgsyms: tuple[UnpackedDeb | None, ...]) -> str | None:
    """A debug file path as the -dbgsym package names it (not the temporary directory it was read in)."""
    if debug_file is None:
        return None
    for dbg in dbgsyms:
        if dbg is not None and debug_file.startswith(str(dbg.root) + os.sep):
            return f"{dbg.deb}:{os.path.relpath(debug_file, dbg.root)}"
    return debug_file


def _relative_message(exc: ImageError, old: UnpackedDeb, new: UnpackedDeb) -> str:
    """The image error's line without the temporary directory's name."""
    text = str(exc)
    for deb in (old, new):
        text = text.replace(str(deb.root) + os.sep, "")
    return text


def _print_files(app: Application, document: dict[str, Any], verb: str) -> None:
    old, new = document["old"], document["new"]
    app.display(f"{old['package']} {old['version']} -> {new['package']} {new['version']}")
    for entry in document["files"]:
        status, path = entry["status"], entry["path"]
        if status == "changed":
            diff = entry["diff"]
            detail = (f"{len(diff['changed'])} changed, {len(diff['added'])} added, {len(diff['removed'])}"
                      f" removed, {len(diff['data'])} data changes")
        elif status == "built":
            build = entry["build"]
            detail = f"{entry['output']} (package {build['package_id']}, {len(build['functions'])} functions)"
        elif status == "refused":
            detail = f"needs a restart: {entry['reason']}"
        elif status in ("added", "removed"):
            detail = f"only in {'NEW' if status == 'added' else 'OLD'}: running processes keep the old one"
        else:
            detail = entry.get("reason", "")
        app.display(f"  {status:<10} {path}{': ' + detail if detail else ''}")
        for reason in entry.get("reasons", ()):
            app.display(f"               - {reason}")
    if verb == "build":
        counts = document["counts"]
        app.display(", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no ELF files")
