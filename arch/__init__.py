"""Machine facts per architecture, shared by the builder and the loader (x86-64 only today).

`hpkg.arch.x86_64` holds the instruction bytes hpkg recognises or writes (endbr64, int3, jumps,
rel32 branch opcodes) and the psABI relocation types with their field widths and value ranges.
It imports neither the builder nor the loader.
"""
