/*
 * A fix that starts using data objects of libc that the baseline never names, so that the fix's
 * executable copy-relocates them (R_X86_64_COPY) and the baseline has no copy of its own.
 *
 *   WORD     "ok WORD (#N)"; the fix rejects a WORD holding ';' and logs it on stderr
 *            (fprintf(stderr, ...): stderr is new; stdout, which main already flushes, is the
 *            baseline's own copy)
 *   ?env     "env"; the fix answers "env E optind I": E entries of environ, and optind after
 *            adding one to it (load and store), with opterr cleared (a store of an immediate)
 *   ?err     "errors"; the fix answers "errors on" while opterr is 1 (libc's initial value) and
 *            "errors off" after ?env cleared it: `cmp [rip+opterr], 1` then a conditional jump
 *   ?set N   "set"; with -DFIX_TAKES_ADDRESS the fix reads N into optind with sscanf(&optind):
 *            the object's address itself (lea in a PIE, a 32-bit absolute in a non-PIE executable)
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern char **environ;
static unsigned long checked;

__attribute__((noinline)) void check(const char *word, char *out, size_t size)
{
    checked++;
#ifdef FIX
    if (strchr(word, ';') != NULL) {
        fprintf(stderr, "hpkg-fix: rejected %s\n", word);
        snprintf(out, size, "rejected %s (#%lu)", word, checked);
        fflush(stdout);
        return;
    }
#endif
    snprintf(out, size, "ok %s (#%lu)", word, checked);
}

__attribute__((noinline)) void describe(char *out, size_t size)
{
#ifdef FIX
    int count = 0;

    for (char **e = environ; *e != NULL; e++)
        count++;
    optind += 1;
    opterr = 0;
    snprintf(out, size, "env %d optind %d", count, optind);
#else
    snprintf(out, size, "env");
#endif
}

__attribute__((noinline)) void errors(char *out, size_t size)
{
#ifdef FIX
    if (opterr == 1) {
        snprintf(out, size, "errors on");
        return;
    }
    snprintf(out, size, "errors off");
#else
    snprintf(out, size, "errors");
#endif
}

__attribute__((noinline)) void set(const char *value, char *out, size_t size)
{
#ifdef FIX_TAKES_ADDRESS
    sscanf(value, "%d", &optind);
#endif
    snprintf(out, size, "set");
}

int main(void)
{
    char line[256], out[300];

    while (fgets(line, sizeof line, stdin) != NULL) {
        char *end = strchr(line, '\n');

        if (end != NULL)
            *end = '\0';
        if (strcmp(line, "?env") == 0)
            describe(out, sizeof out);
        else if (strcmp(line, "?err") == 0)
            errors(out, sizeof out);
        else if (strncmp(line, "?set ", 5) == 0)
            set(line + 5, out, sizeof out);
        else
            check(line, out, sizeof out);
        puts(out);
        fflush(stdout);
    }
    return 0;
}
