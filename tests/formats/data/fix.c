/* Fix of the package-format test program: changed functions, one added helper, new data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int calls;
static const char *greeting = "hello %s, call %d\n";
int weights[16] = {1, 2, 3, 4, 5, 6, 7, 8};
int greet_limit = 3;
static const char farewell[] = "goodbye %s after %d calls\n";

__attribute__((noinline)) int clamp(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

__attribute__((noinline)) int checksum(const char *s)
{
    unsigned h = 5381;
    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return (int)(h ^ (unsigned)weights[h & 15]);
}

__attribute__((noinline)) void greet(const char *who)
{
    calls = clamp(calls + 1, 0, greet_limit);
    if (calls == greet_limit)
        printf(farewell, who, calls);
    else
        printf(greeting, who, calls);
}

__attribute__((noinline)) int classify(int x)
{
    switch (x) {
    case 0: return 10;
    case 1: return 22;
    case 2: return 35;
    case 3: return 41;
    case 4: return 57;
    case 5: return 63;
    default: return -1;
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        greet(argv[i]);
        printf("%d %d\n", checksum(argv[i]), classify(i));
    }
    char *copy = malloc(16);
    strcpy(copy, "x");
    free(copy);
    return 0;
}
