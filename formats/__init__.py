"""The .hpkg container: byte layout, writer, strict reader, signatures. Knows bytes, not ELF."""
