/* Baseline of the package-format test program: a few small functions a fix will replace. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int calls;
static const char *greeting = "hello %s, call %d\n";
int weights[16] = {1, 2, 3, 4, 5, 6, 7, 8};

__attribute__((noinline)) int checksum(const char *s)
{
    int h = 7;
    while (*s)
        h = h * 31 + *s++;
    return h ^ weights[h & 15];
}

__attribute__((noinline)) void greet(const char *who)
{
    calls++;
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
