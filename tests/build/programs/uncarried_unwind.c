/* A C program that takes part in exception handling (-fexceptions: the cleanup below makes main's CIE
 * name __gcc_personality_v0) and whose changed function `scale` is hand-written assembly without CFI:
 * the fix has no FDE for it, so a package cannot carry its unwind rules. */
#include <stdio.h>
#include <stdlib.h>

int helper(int x) { return x + 1; }

#ifdef FIX
#define FACTOR "2"
#else
#define FACTOR "1"
#endif
__asm__(".text\n.globl scale\n.type scale, @function\n.p2align 4\nscale:\n"
        "  push %rbx\n  lea (%rdi,%rdi," FACTOR "), %edi\n  call helper\n  pop %rbx\n  ret\n"
        ".size scale, .-scale\n");
int scale(int);

static void report(int *value) { printf("%d\n", *value); }

int main(int argc, char **argv) {
    int value __attribute__((cleanup(report))) = 0;
    value = scale(argc > 1 ? atoi(argv[1]) : 1);  /* may throw: the cleanup needs a landing pad */
    return value > 1000;
}
