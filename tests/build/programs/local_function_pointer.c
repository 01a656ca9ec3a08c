#include <stdio.h>
#include <stdlib.h>

typedef int (*handler)(int);

static int __attribute__((noinline)) handle_small(int x) { return x + 1; }
static int __attribute__((noinline)) handle_large(int x) { return x * 3; }
#ifdef FIX
static int __attribute__((noinline)) handle_negative(int x) { return -x; }
#endif

/* Returns the address of a static function of the same section: `lea rax, [rip + handle_*]`, which the
   assembler resolves itself, so --emit-relocs keeps no relocation for it. */
__attribute__((noinline)) handler choose(int x)
{
#ifdef FIX
    if (x < 0)
        return handle_negative;
#endif
    return x > 100 ? handle_large : handle_small;
}

int main(int argc, char **argv)
{
    int x = argc > 1 ? atoi(argv[1]) : 5;
    printf("%d\n", choose(x)(x));
    return 0;
}
