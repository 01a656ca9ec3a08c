"""Debug files by build-id from debuginfod servers (`DEBUGINFOD_URLS`), kept in a local cache.

The one module of builder/ that talks to the network, kept apart so that the diff core stays pure:
`load_image` takes a `DebugLookup` (build-id → debug file) and never imports this module; the CLI
builds a `DebuginfodClient` from the environment and passes its `fetch` in.

The protocol is elfutils' (debuginfod(8), debuginfod-client-config(7)): `GET <url>/buildid/<hex>/debuginfo`
on each server of the space-separated `DEBUGINFOD_URLS` in turn, the first 200 wins. Also honoured:
`DEBUGINFOD_TIMEOUT` (seconds until a server starts sending, default 90, ≤ 0 none), `DEBUGINFOD_MAXTIME`
(the whole download, default none) and `DEBUGINFOD_MAXSIZE` (bytes; default and ceiling: the largest
file hpkg reads). Downloads go to `$XDG_CACHE_HOME/hpkg/debuginfod` (else `~/.cache/hpkg/debuginfod`)
in the `.build-id/xx/rest.debug` layout of /usr/lib/debug, so the cache is one more local root;
elfutils' own cache is not shared, its layout is documented as undocumented.

A download is written to a new file (O_EXCL) in the cache, its build-id checked against the one asked
for, then renamed into place: a reader never sees a partial file and a server cannot plant another
build's symbols. When no server has the file, `fetch` raises one ImageError naming the build-id and what
each server answered.
"""

from __future__ import annotations

import http.client
import mmap
import os
import secrets
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpkg.builder.image import MAX_IMAGE_FILE_SIZE, debug_file_path, lookup_build_id
from hpkg.elf.file import read_build_id
from hpkg.errors import ImageError

# elfutils' default for DEBUGINFOD_TIMEOUT: a server that sends nothing for this long is skipped.
DEFAULT_TIMEOUT_SECONDS = 90.0
_CHUNK = 1 << 20
# An HTTP error body or reason quoted in the one-line error is cut to this.
_REASON_CHARS = 80


@dataclass(frozen=True)
class DebuginfodSettings:
    """Where to ask, where to keep what comes back, and the bounds of one download."""

    urls: tuple[str, ...]
    cache_dir: Path
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS
    max_time: float | None = None
    max_size: int = MAX_IMAGE_FILE_SIZE


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME/hpkg/debuginfod, or ~/.cache/hpkg/debuginfod (a relative XDG path is ignored)."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "hpkg" / "debuginfod"


def _seconds(environ: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw[:40]!r} is not a number of seconds") from None
    return value if value > 0 else None


def settings_from_environment(environ: Mapping[str, str] = os.environ) -> DebuginfodSettings | None:
    """The settings the DEBUGINFOD_* variables give, or None when DEBUGINFOD_URLS names no server.

    Raises ValueError, one line, for a value that is not what elfutils' client accepts.
    """
    urls = tuple(environ.get("DEBUGINFOD_URLS", "").split())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"DEBUGINFOD_URLS: {url[:80]!r} is not an http:// or https:// URL")
    if not urls:
        return None
    raw_size = environ.get("DEBUGINFOD_MAXSIZE", "").strip()
    try:
        max_size = int(raw_size) if raw_size else 0
    except ValueError:
        raise ValueError(f"DEBUGINFOD_MAXSIZE={raw_size[:40]!r} is not a number of bytes") from None
    return DebuginfodSettings(
        urls=urls,
        cache_dir=default_cache_dir(environ),
        timeout=_seconds(environ, "DEBUGINFOD_TIMEOUT", DEFAULT_TIMEOUT_SECONDS),
        max_time=_seconds(environ, "DEBUGINFOD_MAXTIME", None),
        # 0 is elfutils' "no limit"; hpkg never reads a file larger than MAX_IMAGE_FILE_SIZE anyway.
        max_size=min(max_size, MAX_IMAGE_FILE_SIZE) if max_size > 0 else MAX_IMAGE_FILE_SIZE,
    )


class _Refused(Exception):
    """One server's answer that is not a usable file: the text that goes into the error line."""


def _has_build_id(path: Path, build_id: str) -> bool:
    """Whether the file at `path` carries exactly this GNU build-id (read through mmap, not whole)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return read_build_id(data).hex() == build_id
    except (OSError, ValueError):
        return False


class DebuginfodClient:
    """Fetches debug files by build-id: from the cache if there, else from each server in turn."""

    def __init__(self, settings: DebuginfodSettings) -> None:
        self.settings = settings

    def fetch(self, build_id: str) -> Path:
        """The debug file of `build_id`, from the cache or a server; ImageError when no server has it."""
        key = lookup_build_id(build_id)
        if key is None:
            raise ImageError(f"build-id {build_id[:40]!r}: not a GNU build-id of 2..64 bytes, not looked up")
        target = debug_file_path(self.settings.cache_dir, key)
        if _is_plain_file(target) and _has_build_id(target, key):
            return target
        answers = []
        for url in self.settings.urls:
            try:
                self._download(url, key, target)
                return target
            except _Refused as exc:
                answers.append(f"{url}: {exc}")
        raise ImageError(
            f"no debug file for build-id {key}: {'; '.join(answers)}"
            " (--no-debuginfod or an empty DEBUGINFOD_URLS goes on without symbols)"
        )

    def _download(self, url: str, build_id: str, target: Path) -> None:
        """GET one server's file into a new file beside `target`, check it, rename it into place."""
        request = urllib.request.Request(
            f"{url.rstrip('/')}/buildid/{build_id}/debuginfo", headers={"User-Agent": "hpkg"}
        )
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageError(f"cannot create the debuginfod cache {target.parent}: {exc.strerror}") from None
        temporary = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
        try:
            with _open_response(request, self.settings.timeout) as response:
                self._receive(response, temporary)
            if not _has_build_id(temporary, build_id):
                raise _Refused("sent a file that is not the debug file of that build-id")
            os.replace(temporary, target)
        except OSError as exc:
            raise ImageError(f"cannot write the debuginfod cache {target.parent}: {exc.strerror}") from None
        finally:
            temporary.unlink(missing_ok=True)

    def _receive(self, response, temporary: Path) -> None:
        """Copy the body to a new file (O_EXCL, no symlink followed) within the size and time bounds."""
        limit, started = self.settings.max_size, time.monotonic()
        announced = response.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            raise _Refused(f"file of {announced} bytes, over the limit of {limit} (DEBUGINFOD_MAXSIZE)")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as out:
            received = 0
            while chunk := _read(response, _CHUNK):
                received += len(chunk)
                if received > limit:
                    raise _Refused(f"file larger than the limit of {limit} bytes (DEBUGINFOD_MAXSIZE)")
                max_time = self.settings.max_time
                if max_time is not None and time.monotonic() - started > max_time:
                    raise _Refused(f"download not complete within {max_time:g} s (DEBUGINFOD_MAXTIME)")
                out.write(chunk)


def _is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _short(text: object) -> str:
    """A server-supplied reason, on one line and bounded."""
    line = " ".join(str(text).split())
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def _no_answer(timeout: float | None) -> str:
    # Without DEBUGINFOD_TIMEOUT the kernel's connect timeout (ETIMEDOUT) is the one that struck.
    return f"no answer within {timeout:g} s (DEBUGINFOD_TIMEOUT)" if timeout else "no answer (timed out)"


def _open_response(request: urllib.request.Request, timeout: float | None):
    """urlopen, with every way a server can fail turned into one short _Refused line."""
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https checked above)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise _Refused("not found (HTTP 404)") from None
        raise _Refused(f"HTTP {exc.code} {_short(exc.reason)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise _Refused(_no_answer(timeout)) from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise _Refused(f"cannot be reached ({_short(text)})") from None
    except TimeoutError:
        raise _Refused(_no_answer(timeout)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _Refused(f"cannot be reached ({_short(exc)})") from None


def _read(response, size: int) -> bytes:
    """What has arrived of the body, up to `size` bytes (read1 does not wait for all of them, so the
    time bound is checked as data comes); a stalled or dropped connection becomes a _Refused line."""
    try:
        return response.read1(size)
    except TimeoutError:
        raise _Refused("stopped sending (DEBUGINFOD_TIMEOUT)") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _Refused(f"connection broken ({_short(exc) or type(exc).__name__})") from None


def debuginfod_lookup(environ: Mapping[str, str] = os.environ) -> Callable[[str], Path] | None:
    """The `DebugLookup` of DEBUGINFOD_URLS for load_image, or None when it names no server."""
    settings = settings_from_environment(environ)
    return DebuginfodClient(settings).fetch if settings is not None else None
