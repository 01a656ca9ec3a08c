/* A fix that changes a function and a global's initializer: refused unless data-value-changed is allowed. */
#include <stdio.h>
#include <stdlib.h>

long limit =
#ifdef FIX
    64;
#else
    128;
#endif

__attribute__((noinline)) int too_big(long n)
{
#ifdef FIX
    if (n < 0)
        return 1;
#endif
    return n > limit;
}

int main(int argc, char **argv)
{
    printf("%d\n", too_big(argc > 1 ? atol(argv[1]) : 0));
    return 0;
}
