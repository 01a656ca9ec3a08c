/* A baseline and its fix (-DFIX) whose new code holds absolute addresses: a table of string pointers,
 * a table of function pointers (baseline functions and a new one), and a switch that a non-PIE build
 * compiles to a jump table of absolute addresses. The fix also calls libc functions the baseline never
 * calls (strncpy, toupper) and keeps new zero-initialised state. One request line in, one answer out. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int served; /* live state: the fix must keep counting in the baseline's variable */

__attribute__((noinline)) int twice(int v) { return 2 * v; }
__attribute__((noinline)) int thrice(int v) { return 3 * v; }

#ifdef FIX
__attribute__((noinline)) int negate(int v) { return -v; }
static const char *const shapes[] = {"circle", "square", "triangle", "hexagon", "octagon"};
static char shown[16];
static int (*const operations[])(int) = {twice, thrice, negate};
#endif

__attribute__((noinline)) const char *shape(int i)
{
#ifdef FIX
    if (i < 0 || i >= (int)(sizeof shapes / sizeof shapes[0]))
        return "no such shape";
    strncpy(shown, shapes[i], sizeof shown - 1);
    shown[0] = (char)toupper((unsigned char)shown[0]);
    return shown;
#else
    return i == 0 ? "circle" : "square";
#endif
}

__attribute__((noinline)) int operate(int which, int v)
{
#ifdef FIX
    if (which < 0 || which >= (int)(sizeof operations / sizeof operations[0]))
        return 0;
    return operations[which](v);
#else
    return which == 0 ? twice(v) : thrice(v);
#endif
}

__attribute__((noinline)) int grade(int score)
{
    switch (score / 10) {
    case 10:
    case 9: return 'A';
    case 8: return 'B';
    case 7: return 'C';
    case 6: return 'D';
#ifdef FIX
    case 5: return 'E';
    case 4: return 'E';
#endif
    default: return 'F';
    }
}

int main(void)
{
    char line[256];
    int a, b;
    while (fgets(line, sizeof line, stdin)) {
        served++;
        if (sscanf(line, "shape %d", &a) == 1)
            printf("%s\n", shape(a));
        else if (sscanf(line, "op %d %d", &a, &b) == 2)
            printf("%d\n", operate(a, b));
        else if (sscanf(line, "grade %d", &a) == 1)
            printf("%c\n", grade(a));
        else
            printf("served %d\n", served);
        fflush(stdout);
    }
    return 0;
}
