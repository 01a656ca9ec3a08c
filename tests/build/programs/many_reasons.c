#include <stdio.h>
#include <string.h>

struct limits {
    int max;
#ifdef FIX
    int min;
#endif
};

struct limits limits = {10};
int threshold =
#ifdef FIX
    5;
#else
    7;
#endif
static int ready_flag;

__attribute__((constructor)) static void setup(void)
{
#ifdef FIX
    ready_flag = 2;
#else
    ready_flag = 1;
#endif
}

__attribute__((noinline)) int tiny(void)
{
#ifdef FIX
    return 1;
#else
    return 0;
#endif
}

int main(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin))
        printf("%d %d %d %d\n", limits.max, threshold, ready_flag, tiny() + (int)strlen(line));
    return 0;
}
