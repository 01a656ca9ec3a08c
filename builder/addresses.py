"""Convert between the address kinds of one image: link address, file offset and runtime address.

After angr cle's address_translator: every conversion goes through here, so no stage adds or
subtracts a load bias or a segment offset by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpkg.builder.model import FileOffset, Image, LinkAddress, RuntimeAddress


@dataclass(frozen=True)
class AddressTranslator:
    """Maps addresses of one image through its PT_LOAD segments and a load bias (0 for non-PIE)."""

    image: Image
    load_bias: int = 0

    def link_to_offset(self, address: LinkAddress) -> FileOffset | None:
        """The file offset holding the byte at a link address, or None (.bss, or not mapped)."""
        for segment in self.image.segments:
            if segment.kind == "LOAD" and segment.address <= address < segment.address + segment.file_size:
                return FileOffset(segment.offset + (address - segment.address))
        return None

    def offset_to_link(self, offset: FileOffset) -> LinkAddress | None:
        """The link address a file offset is mapped to, or None if no PT_LOAD covers it."""
        for segment in self.image.segments:
            if segment.kind == "LOAD" and segment.offset <= offset < segment.offset + segment.file_size:
                return LinkAddress(segment.address + (offset - segment.offset))
        return None

    def link_to_runtime(self, address: LinkAddress) -> RuntimeAddress:
        return RuntimeAddress(address + self.load_bias)

    def runtime_to_link(self, address: RuntimeAddress) -> LinkAddress:
        return LinkAddress(address - self.load_bias)
