/* A 3-byte function (xor eax,eax; ret) fixed to return 1: the jump borrows the alignment padding. */
#include <stdio.h>

__attribute__((noinline)) int allowed(void)
{
#ifdef FIX
    return 1;
#else
    return 0;
#endif
}

__attribute__((noinline)) int other(int n) { return n + 3; }

int main(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin))
        printf("%d %d\n", allowed(), other(line[0]));
    return 0;
}
