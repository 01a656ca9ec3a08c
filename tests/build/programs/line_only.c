#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef FIX
#line 40 /* as if the fix had inserted lines above */
#endif
__attribute__((noinline)) long twice(long n)
{
    assert(n >= 0);
    return n * 2;
}

int main(int argc, char **argv)
{
    printf("%ld\n", twice(argc > 1 ? atol(argv[1]) : 1));
    return 0;
}
