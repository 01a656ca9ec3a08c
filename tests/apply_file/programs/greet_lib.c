/* A shared library (the baseline, and its fix with -DFIX) whose fix uses library objects and functions
 * the baseline never touched: it writes a warning to stderr (a data object of libc, reached through a
 * GOT slot) with fputs, after checking the length with strlen. */
#include <stdio.h>
#include <string.h>

int greet(const char *name, char *out, size_t size)
{
#ifdef FIX
    if (strlen(name) > 12) {
        fputs("greet: name too long\n", stderr);
        return -1;
    }
#endif
    return snprintf(out, size, "hello %s", name);
}
