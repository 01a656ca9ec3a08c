"""hpkg: build hotpatch packages from shipped ELF binaries and apply them to running processes."""

__version__ = "0.1.0"
