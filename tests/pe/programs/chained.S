/*
 * One function in three .pdata entries, as MSVC lays out shrink-wrapped and hot/cold-split code:
 * split_entry's primary entry, a chained entry right after it (UNW_FLAG_CHAININFO: the body past
 * the prologue), and a chained entry far from it, after another function (the cold path). GCC for
 * mingw emits no chained unwind info, so the tables are written here with the assembler's .rva.
 * -DFIX changes only the far part.
 */
        .text
        .globl  split_entry
        .def    split_entry; .scl 2; .type 32; .endef
        .p2align 4
split_entry:
        subq    $40, %rsp
        movl    %ecx, %eax
        testl   %eax, %eax
        js      far_part
split_middle:
        addl    $1, %eax
        addq    $40, %rsp
        ret
split_end:
        .p2align 4
        .globl  other
        .def    other; .scl 2; .type 32; .endef
other:
        leal    1(%rcx), %eax
        ret
other_end:
        .p2align 4
far_part:
#ifdef FIX
        movl    $0, %eax
#else
        negl    %eax
#endif
        addq    $40, %rsp
        ret
far_end:

        .section .xdata,"dr"
        .p2align 2
unwind_primary:                 /* version 1; prologue 4 bytes; one code: at 4, UWOP_ALLOC_SMALL 40 */
        .byte 1, 4, 1, 0
        .byte 4, 0x42, 0, 0
unwind_chained:                 /* version 1 | UNW_FLAG_CHAININFO << 3; then the primary's entry */
        .byte 0x21, 0, 0, 0
        .rva split_entry, split_middle, unwind_primary
unwind_leaf:
        .byte 1, 0, 0, 0

        .section .pdata,"dr"
        .p2align 2
        .rva split_entry, split_middle, unwind_primary
        .rva split_middle, split_end, unwind_chained
        .rva other, other_end, unwind_leaf
        .rva far_part, far_end, unwind_chained
