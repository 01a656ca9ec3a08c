/*
 * A service with a run-time configuration: "debug" dumps internal state when debugging is on,
 * "limit N" changes the upload limit, "upload N" checks a size against it.
 * The bug (debug features left on in production, CWE-489): the configuration's initializer
 * turns debugging on.  The fix changes only that initializer; the code is the same.  A running
 * process may have changed the configuration since it started, so a hotpatch cannot know what
 * to write there: the change must be refused.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

struct config {
    long upload_limit;
    int debug;
    char secret[16];
};

struct config config = {
    .upload_limit = 1024,
#ifdef FIX
    .debug = 0,
#else
    .debug = 1,
#endif
    .secret = "hunter2",
};

void handle(const char *request, char *answer, size_t size)
{
    long n;

    if (strcmp(request, "debug") == 0) {
        if (config.debug)
            snprintf(answer, size, "debug: limit %ld secret %s", config.upload_limit, config.secret);
        else
            snprintf(answer, size, "error: debugging is off");
    } else if (sscanf(request, "limit %ld", &n) == 1) {
        config.upload_limit = n;
        snprintf(answer, size, "limit %ld", n);
    } else if (sscanf(request, "upload %ld", &n) == 1) {
        snprintf(answer, size, n <= config.upload_limit ? "accepted %ld" : "error: %ld too large", n);
    } else {
        snprintf(answer, size, "error: unknown request");
    }
}
