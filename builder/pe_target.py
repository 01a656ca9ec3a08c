"""How a package records a Windows PE32+ baseline (format 1.4, formats/SPEC.md).

The identity is the image's CodeView record (RSDS GUID + age), else TimeDateStamp + SizeOfImage + a
digest of the headers (hpkg.pe.identity), in the field ELF packages use for the build-id. The image
size is SizeOfImage. Every baseline address the package holds (patch sites, BASELINE relocation
targets) is an RVA, and `image_base` keeps the preferred ImageBase: a loader adds the base the image
actually has (ImageBase in a file, the header mapping's start in a process), as it adds the load
bias of a position-independent ELF. The plan works in link addresses (ImageBase + RVA, what objdump
shows); `as_rvas` converts the finished record once.
"""

from __future__ import annotations

import os
from dataclasses import replace

from hpkg.builder.model import Image
from hpkg.errors import ImageError
from hpkg.formats import Package, TargetRecord
from hpkg.formats.model import PE_FILE_FORMAT, TargetSpace


def pe_baseline_record(image: Image) -> TargetRecord:
    """The baseline record of a PE32+ image: identity, SizeOfImage, ImageBase, file digest, file name."""
    headers = image.pe_headers
    if headers is None or not image.build_id:
        raise ImageError(f"{image.path}: not a PE32+ image with an identity")
    return TargetRecord(
        build_id=bytes.fromhex(image.build_id),
        image_size=headers.size_of_image,
        file_format=PE_FILE_FORMAT,
        file_sha256=image.file_sha256 or None,
        soname_hint=os.path.basename(image.path),
        image_base=headers.image_base,
    )


def as_rvas(package: Package) -> Package:
    """`package` with its baseline link addresses (ImageBase + RVA) turned into RVAs."""
    base = package.target.image_base
    assert base is not None
    functions = tuple(replace(f, baseline_address=f.baseline_address - base) for f in package.functions)
    relocations = tuple(
        replace(r, target=r.target - base) if r.space is TargetSpace.BASELINE else r
        for r in package.relocations
    )
    return replace(package, functions=functions, relocations=relocations)
