"""PE/COFF numbers (Microsoft's "PE Format" specification), named after their C constants."""

from __future__ import annotations

DOS_MAGIC = b"MZ"
PE_SIGNATURE = b"PE\0\0"
E_LFANEW = 0x3C  # where the DOS header keeps the file offset of the PE signature

IMAGE_FILE_MACHINE_AMD64 = 0x8664
IMAGE_FILE_MACHINE_I386 = 0x14C
IMAGE_FILE_MACHINE_ARM64 = 0xAA64
MACHINE_NAMES: dict[int, str] = {
    IMAGE_FILE_MACHINE_AMD64: "x86-64",
    IMAGE_FILE_MACHINE_I386: "i386",
    IMAGE_FILE_MACHINE_ARM64: "aarch64",
    0x1C0: "arm",
    0x1C4: "armnt",
}

IMAGE_FILE_EXECUTABLE_IMAGE = 0x0002
IMAGE_FILE_DLL = 0x2000

IMAGE_NT_OPTIONAL_HDR32_MAGIC = 0x10B  # PE32
IMAGE_NT_OPTIONAL_HDR64_MAGIC = 0x20B  # PE32+

# Data directory indices.
IMAGE_DIRECTORY_ENTRY_EXPORT = 0
IMAGE_DIRECTORY_ENTRY_IMPORT = 1
IMAGE_DIRECTORY_ENTRY_EXCEPTION = 3
IMAGE_DIRECTORY_ENTRY_SECURITY = 4  # Authenticode certificates: a file offset, not an RVA
IMAGE_DIRECTORY_ENTRY_BASERELOC = 5
IMAGE_DIRECTORY_ENTRY_DEBUG = 6
IMAGE_DIRECTORY_ENTRY_TLS = 9
IMAGE_DIRECTORY_ENTRY_IAT = 12

# Section characteristics.
IMAGE_SCN_CNT_CODE = 0x00000020
IMAGE_SCN_CNT_INITIALIZED_DATA = 0x00000040
IMAGE_SCN_CNT_UNINITIALIZED_DATA = 0x00000080
IMAGE_SCN_MEM_DISCARDABLE = 0x02000000
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_READ = 0x40000000
IMAGE_SCN_MEM_WRITE = 0x80000000

# Base relocation types (the top 4 bits of each 16-bit entry).
IMAGE_REL_BASED_ABSOLUTE = 0  # padding: the block's last entry when the count is odd
IMAGE_REL_BASED_HIGHLOW = 3  # a 32-bit address
IMAGE_REL_BASED_DIR64 = 10  # a 64-bit address: every pointer word of a PE32+ image

IMAGE_DEBUG_TYPE_CODEVIEW = 2
CODEVIEW_RSDS = b"RSDS"  # CodeView 7.0 (PDB 7.0): GUID, age, PDB path

# UNWIND_INFO flags (the top 5 bits of its first byte).
UNW_FLAG_EHANDLER = 0x1
UNW_FLAG_UHANDLER = 0x2
UNW_FLAG_CHAININFO = 0x4

# UNWIND_CODE operations (the low 4 bits of an unwind code's second byte), Microsoft's x64 names.
UWOP_PUSH_NONVOL = 0  # push reg: one slot
UWOP_ALLOC_LARGE = 1  # sub rsp, n: a 16-bit n/8 in the next slot (info 0) or a 32-bit n in two (info 1)
UWOP_ALLOC_SMALL = 2  # sub rsp, info*8 + 8
UWOP_SET_FPREG = 3  # lea framereg, [rsp + FrameOffset*16]
UWOP_SAVE_NONVOL = 4  # mov [rsp + n*8], reg: n in the next slot
UWOP_SAVE_NONVOL_FAR = 5  # mov [rsp + n], reg: a 32-bit n in the next two slots
UWOP_EPILOG = 6  # version 2: an epilog's location (two slots; a hint, not an operation)
UWOP_SPARE_CODE = 7
UWOP_SAVE_XMM128 = 8  # movaps [rsp + n*16], xmmN: n in the next slot
UWOP_SAVE_XMM128_FAR = 9  # movaps [rsp + n], xmmN: a 32-bit n in the next two slots
UWOP_PUSH_MACHFRAME = 10  # the CPU pushed ss, rsp, eflags, cs, rip (info 1: and an error code)

# COFF symbol table (IMAGE_SYMBOL): storage classes and the derived type of a function.
IMAGE_SYM_CLASS_EXTERNAL = 2
IMAGE_SYM_CLASS_STATIC = 3
IMAGE_SYM_CLASS_LABEL = 6
IMAGE_SYM_CLASS_FILE = 103
IMAGE_SYM_DTYPE_FUNCTION = 2  # (Type >> 4) & 3
