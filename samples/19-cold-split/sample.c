/*
 * A record parser: "parse KEY=VALUE" stores a setting and answers with it.
 * The bug (sensitive data in an error message, CWE-209): the rare error path, which GCC moves
 * into a separate cold fragment (parse_setting.cold), echoes the stored API token.  The fix
 * changes only that cold path.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sample.h"

static char api_token[32] = "tok-5f3a9c";
static unsigned long settings;

/* Format an error answer; cold, so GCC moves the paths that call it out of the hot code. */
__attribute__((cold, noinline)) void fail(char *answer, size_t size, const char *format, ...)
{
    va_list args;

    va_start(args, format);
    vsnprintf(answer, size, format, args);
    va_end(args);
}

int parse_setting(const char *text, char *answer, size_t size)
{
    const char *equals = strchr(text, '=');

    if (equals == NULL || equals == text) {
#ifdef FIX
        fail(answer, size, "error: expected KEY=VALUE");
#else
        fail(answer, size, "error: expected KEY=VALUE (token %s)", api_token);
#endif
        return -1;
    }
    settings++;
    snprintf(answer, size, "set %.*s to %s (%lu settings)", (int)(equals - text), text, equals + 1,
             settings);
    return 0;
}

void handle(const char *request, char *answer, size_t size)
{
    if (strncmp(request, "parse ", 6) == 0)
        parse_setting(request + 6, answer, size);
    else if (strcmp(request, "token") == 0)
        snprintf(answer, size, "token is %zu characters", strlen(api_token));
    else
        snprintf(answer, size, "error: unknown request");
}
