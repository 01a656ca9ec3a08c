"""Size and time of the .hpkg payload compression per zstd level, on payloads cut from real binaries.

Run: .venv/bin/python -m bench.zstd_levels [BINARY]. A payload is what write_package compresses:
code | rodata | data | relocation table. Code and rodata are slices of the binary's .text and
.rodata (real gcc output); the relocation table encodes one record per 8-byte dynamic relocation
of the binary whose offset falls in the data slice, as the 24-byte records the format uses.
"""

from __future__ import annotations

import statistics
import sys
import time

import lief
import zstandard

from hpkg.formats.model import PackageSection, Relocation, RelocationKind, TargetSpace
from hpkg.formats.reloctable import encode_relocations

LEVELS = (1, 3, 6, 9, 12, 15, 17, 19)
CODE_SIZES = (4 * 1024, 32 * 1024, 256 * 1024)


def payload_from(binary: lief.ELF.Binary, code_size: int) -> bytes:
    """A payload with `code_size` bytes of code and proportionate rodata, data and relocations."""
    text, rodata, data = (binary.get_section(n) for n in (".text", ".rodata", ".data"))
    code = bytes(text.content[:code_size])
    ro = bytes(rodata.content[: code_size // 4])
    rw = bytes(data.content[: code_size // 8])
    start = data.virtual_address
    relocations = tuple(
        Relocation(PackageSection.DATA, r.address - start, RelocationKind.R_X86_64_64, TargetSpace.BASELINE,
                   r.addend & 0xFFFFFFFFFFFFFFFF, 0)
        for r in binary.dynamic_relocations
        if start <= r.address < start + len(rw) - 8 and r.address % 8 == 0
    )
    return code + ro + rw + encode_relocations(relocations)


def measure(payload: bytes, level: int, runs: int = 7) -> tuple[int, float, float]:
    """(compressed size, median compress seconds, median decompress seconds)."""
    params = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(payload))
    cctx = zstandard.ZstdCompressor(compression_params=params)
    dctx = zstandard.ZstdDecompressor()
    frame, ctimes, dtimes = b"", [], []
    for _ in range(runs):
        t = time.perf_counter()
        frame = cctx.compress(payload)
        ctimes.append(time.perf_counter() - t)
        t = time.perf_counter()
        dctx.decompress(frame)
        dtimes.append(time.perf_counter() - t)
    return len(frame), statistics.median(ctimes), statistics.median(dtimes)


def main(argv: list[str]) -> None:
    path = argv[0] if argv else sys.executable
    binary = lief.parse(path)
    print(f"payloads cut from {path}")
    for code_size in CODE_SIZES:
        payload = payload_from(binary, code_size)
        print(f"\npayload {len(payload)} bytes (code {code_size})")
        print("level  compressed  ratio  compress ms  decompress ms")
        for level in LEVELS:
            size, ctime, dtime = measure(payload, level)
            ratio = len(payload) / size
            print(f"{level:5d}  {size:10d}  {ratio:5.2f}  {ctime * 1e3:11.2f}  {dtime * 1e3:13.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
