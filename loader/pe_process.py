"""Windows PE32+ images in a process running under Wine: found by their identity, read by RVA.

Wine maps a PE image's headers from its file at the image's base (`r--p`, file offset 0, with the
path) and its sections after them, anonymous for a mingw image (file alignment 0x200). So an image is
a file-backed mapping at offset 0 whose first bytes are an MZ header; its identity (CodeView record,
else the fallback rule: hpkg.pe.identity) is read from the process's memory, and its base is where
that mapping starts: the bias a package's RVAs get. The file behind the mapping
(/proc/PID/map_files) says where its functions start, as for ELF (loader/bounds.py), never the
target's memory, which the target could rewrite.

The first step of a live apply under Wine (issue 12, item 4); `hpkg verify --pid` runs it today.
"""

from __future__ import annotations

import dataclasses

from hpkg.errors import ImageError, IncompatibleTarget, TargetError
from hpkg.formats.model import Package
from hpkg.loader.bounds import ImageCode, mapped_file_of
from hpkg.loader.pe_file import PeFile
from hpkg.loader.process import Process
from hpkg.loader.procfs import Mapping, RuntimeImage
from hpkg.loader.terminal import printable
from hpkg.pe.constants import DOS_MAGIC
from hpkg.pe.headers import memory_reader, parse_headers
from hpkg.pe.identity import image_identity

# No ELF e_type: a PE image's RuntimeImage says 0 there.
PE_IMAGE_TYPE = 0


def _pe_header_mappings(process: Process, maps: tuple[Mapping, ...]) -> list[Mapping]:
    """File-backed mappings at offset 0 that start with the MZ magic."""
    found = []
    for m in maps:
        if m.offset != 0 or not m.readable or not m.path.startswith("/"):
            continue
        try:
            if process.read(m.start, len(DOS_MAGIC)) == DOS_MAGIC:
                found.append(m)
        except TargetError:
            continue
    return found


def pe_images(process: Process, maps: tuple[Mapping, ...] | None = None) -> list[RuntimeImage]:
    """Every PE32+ image the process maps (`maps`: its mappings, read now if not given), with its identity
    as `build_id` and its base as `load_bias`."""
    maps = process.maps() if maps is None else maps
    images = []
    for header in _pe_header_mappings(process, maps):
        read = memory_reader(process.read, header.start)
        try:
            headers = parse_headers(read, header.path)
            identity = image_identity(headers, read)
        except (ImageError, TargetError):
            continue  # not an x86-64 PE image, or one this process no longer maps whole
        end = header.start + headers.size_of_image
        mappings = tuple(m for m in maps if header.start <= m.start < end)
        images.append(
            RuntimeImage(header.path, identity.hex(), header.start, PE_IMAGE_TYPE, (), mappings)
        )
    return images


def pe_baseline_images(process: Process, package: Package) -> list[RuntimeImage]:
    """The PE images of `process` whose identity is the package's baseline; IncompatibleTarget if none."""
    wanted = package.target.build_id.hex()
    images = pe_images(process)
    found = [i for i in images if i.build_id == wanted]
    if not found:
        hint = f" ({package.target.soname_hint})" if package.target.soname_hint else ""
        raise IncompatibleTarget(
            f"process {process.pid} maps no PE image with identity {wanted}{hint}: not the baseline this"
            " package was built for",
            tuple(f"{i.path}: identity {i.build_id}" for i in images),
        )
    return found


def pe_image_code_of_process(pid: int, image: RuntimeImage) -> ImageCode:
    """The function entries of a process's PE image, from the file it mapped (its header mapping)."""
    path = mapped_file_of(pid, image)
    return dataclasses.replace(PeFile.open(path).image_code(), path=printable(image.path))
