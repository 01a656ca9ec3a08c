/* The fix adds initialised variables holding pointers: a message and a table of handlers. */
#include <stdio.h>
#include <stdlib.h>

static long served;

__attribute__((noinline)) int twice(int n) { return 2 * n; }
__attribute__((noinline)) int negate(int n) { return -n; }

#ifdef FIX
const char *refusal = "refused: negative input";
int (*handlers[2])(int) = {twice, negate};
#endif

__attribute__((noinline)) void serve(int n, char *out, size_t size)
{
    served++;
#ifdef FIX
    if (n < 0) {
        snprintf(out, size, "%s (%ld)", refusal, served);
        return;
    }
    snprintf(out, size, "%d %d (%ld)", handlers[0](n), handlers[1](n), served);
#else
    snprintf(out, size, "%d %d (%ld)", twice(n), negate(n), served);
#endif
}

int main(void)
{
    char line[64], out[128];
    while (fgets(line, sizeof line, stdin)) {
        serve(atoi(line), out, sizeof out);
        puts(out);
    }
    return 0;
}
