/* The fix adds a thread-local variable (the static TLS block grows) and changes an IFUNC resolver. */
#include <stdio.h>

__thread long requests;
#ifdef FIX
__thread long failures;
#endif

static int pick_plain(void) { return 1; }
static int pick_fast(void) { return 2; }

int feature_level = 2;

static void *resolve_pick(void)
{
#ifdef FIX
    return feature_level > 1 ? (void *)pick_fast : (void *)pick_plain;
#else
    return feature_level > 3 ? (void *)pick_fast : (void *)pick_plain;
#endif
}

int pick(void) __attribute__((ifunc("resolve_pick")));

__attribute__((noinline)) long count(int ok)
{
    requests++;
#ifdef FIX
    if (!ok)
        failures++;
#endif
    return requests;
}

int main(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin))
        printf("%ld %d\n", count(line[0] != '!'), pick());
    return 0;
}
