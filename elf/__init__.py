"""The ELF layer shared by the builder and the loader: layouts and constants defined once, and readers.

  constants  names for the format's numbers (PT_, SHT_, SHF_, NT_, DT_, STT_, …)
  structs    the Elf64 record layouts, one named tuple per record (unpack_from / pack)
  headers    ELF header and program headers through one reader (a file, or a process's memory)
  notes      notes, and the one GNU build-id reader (alignment from p_align / sh_addralign)
  file       ElfFile: a whole file in memory, bytes by link address, sections, .dynamic
  dynamic    dynamic symbols with versions, DT_NEEDED / DT_RUNPATH, dynamic relocations, verneed
  plt        the one PLT reader (.plt, .plt.sec, .plt.got; 8- and 16-byte entries)
  imports    each imported symbol's PLT entry and GOT slot
  ehframe    .eh_frame records, DW_EH_PE pointers, .eh_frame_hdr

It imports neither the builder nor the loader (architecture facts come from `hpkg.arch`).
"""
