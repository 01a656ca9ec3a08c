"""Names for the numbers of the ELF format (System V gABI, the GNU extensions, glibc's <elf.h>).

Only what hpkg reads or writes. Relocation types are per architecture: see `hpkg.arch.x86_64`.
"""

from __future__ import annotations

# e_ident
ELF_MAGIC = b"\x7fELF"
EI_CLASS, EI_DATA = 4, 5
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1

# e_type
ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4

# e_machine: the one hpkg handles, and names for the ones it refuses in its error message
EM_X86_64 = 62
MACHINE_NAMES = {3: "i386", 40: "arm", 62: "x86-64", 183: "aarch64", 243: "riscv"}

# e_phnum escape: the real count is in section header 0's sh_info
PN_XNUM = 0xFFFF

# p_type
PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_PHDR, PT_TLS = 0, 1, 2, 3, 4, 6, 7
PT_GNU_EH_FRAME = 0x6474E550
PT_GNU_STACK = 0x6474E551
PT_GNU_RELRO = 0x6474E552
PT_GNU_PROPERTY = 0x6474E553

# p_flags
PF_X, PF_W, PF_R = 1, 2, 4

# special section indexes
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF  # e_shstrndx escape: the real index is in section header 0's sh_link

# sh_type
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_HASH, SHT_DYNAMIC, SHT_NOTE, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 5, 6, 7, 8, 9, 11
SHT_GNU_HASH = 0x6FFFFFF6
SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF

# sh_flags
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHF_TLS = 0x400

# note types (owner "GNU")
NOTE_OWNER_GNU = b"GNU"
NT_GNU_BUILD_ID = 3
NT_GNU_PROPERTY_TYPE_0 = 5

# d_tag
DT_NULL, DT_NEEDED, DT_PLTRELSZ, DT_PLTGOT, DT_HASH, DT_STRTAB, DT_SYMTAB = 0, 1, 2, 3, 4, 5, 6
DT_RELA, DT_RELASZ, DT_RELAENT, DT_STRSZ, DT_SYMENT = 7, 8, 9, 10, 11
DT_SONAME, DT_RPATH = 14, 15
DT_PLTREL, DT_DEBUG, DT_JMPREL = 20, 21, 23  # DT_DEBUG: the dynamic linker's r_debug, at run time
DT_RUNPATH = 29
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM = 0x6FFFFFF0
DT_VERDEF, DT_VERDEFNUM = 0x6FFFFFFC, 0x6FFFFFFD
DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF

# st_info: binding in the high nibble, type in the low one
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS = 0, 1, 2, 3, 4, 5, 6
STT_GNU_IFUNC = 10

# symbol versions (.gnu.version entries, Elf64_Verdef.vd_flags)
VER_NDX_LOCAL, VER_NDX_GLOBAL = 0, 1
VERSYM_HIDDEN = 0x8000  # `sym@VER` (not the default `sym@@VER`)
VERSYM_INDEX = 0x7FFF
VER_FLG_BASE = 0x1  # the verdef naming the file itself (its soname), not a version

# auxiliary vector (/proc/PID/auxv) entries
AT_NULL, AT_PHDR, AT_BASE = 0, 3, 7


def st_bind(info: int) -> int:
    """The binding (STB_*) in a symbol's st_info."""
    return info >> 4


def st_type(info: int) -> int:
    """The type (STT_*) in a symbol's st_info."""
    return info & 0xF


def st_info(bind: int, kind: int) -> int:
    """st_info for a binding and a type."""
    return bind << 4 | kind
