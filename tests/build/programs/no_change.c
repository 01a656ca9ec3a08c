/* The fix touches nothing: -DFIX only defines a macro nobody uses. */
#include <stdio.h>

#ifdef FIX
#define UNUSED_BY_ANYONE 1
#endif

int main(void)
{
    puts("same");
    return 0;
}
