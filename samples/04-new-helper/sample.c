/*
 * A file service: "read PATH" answers with the file it would open under its root.
 * The bug (a path traversal, CWE-22): the path is used as given, so "../" walks out of the
 * root.  The fix adds a helper, path_is_safe(), and calls it before opening.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

#define ROOT "/srv/files/"

#ifdef FIX
/* A path is safe when it is relative and no component of it is "..". */
int path_is_safe(const char *path)
{
    const char *p = path;

    if (*path == '/')
        return 0;
    while (*p != '\0') {
        if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == '\0'))
            return 0;
        p = strchr(p, '/');
        if (p == NULL)
            break;
        p++;
    }
    return 1;
}
#endif

void handle(const char *request, char *answer, size_t size)
{
    if (strncmp(request, "read ", 5) != 0) {
        snprintf(answer, size, "error: unknown request");
        return;
    }
#ifdef FIX
    if (!path_is_safe(request + 5)) {
        snprintf(answer, size, "error: path escapes the root");
        return;
    }
#endif
    snprintf(answer, size, "open %s%s", ROOT, request + 5);
}
