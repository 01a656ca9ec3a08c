/*
 * A fix that calls a libc function the baseline never imports: `check WORD` answers "ok WORD (#N)";
 * the fix (-DFIX) answers "rejected WORD (#N)" when WORD has characters outside a-z, found with
 * strspn(), an IFUNC in glibc (its implementation is chosen per CPU at load time). The live loader
 * must resolve it without calling into the target.
 */
#include <stdio.h>
#include <string.h>

static unsigned long checked;

#ifdef FIX
/* Through the GOT, not a new PLT entry: main's calls keep their PLT entries, so only check() changes. */
size_t strspn(const char *s, const char *accept) __attribute__((noplt));
#endif

__attribute__((noinline)) void check(const char *word, char *out, size_t size)
{
    checked++;
#ifdef FIX
    if (word[strspn(word, "abcdefghijklmnopqrstuvwxyz")] != '\0') {
        snprintf(out, size, "rejected %s (#%lu)", word, checked);
        return;
    }
#endif
    snprintf(out, size, "ok %s (#%lu)", word, checked);
}

int main(void)
{
    char line[256], out[300];

    while (fgets(line, sizeof line, stdin) != NULL) {
        char *end = strchr(line, '\n');

        if (end != NULL)
            *end = '\0';
        check(line, out, sizeof out);
        puts(out);
        fflush(stdout);
    }
    return 0;
}
