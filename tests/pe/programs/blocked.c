/*
 * The replaced function is where the program waits: next_number() blocks in fgets (a read on the Unix
 * side of Wine, on Wine's kernel stack) until a line comes. Its return address into main and fgets's
 * into next_number lie on the Windows stack, which the thread's rsp is not on while it waits: a live
 * apply must still find it inside next_number and refuse. -DFIX adds one.
 */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int next_number(void)
{
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return -1;
#ifdef FIX
    return atoi(line) + 1;
#else
    return atoi(line);
#endif
}

int main(void)
{
    int n;
    while ((n = next_number()) >= 0) {
        printf("%d\n", n);
        fflush(stdout);
    }
    return 0;
}
