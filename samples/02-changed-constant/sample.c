/*
 * A login record: "login NAME" sets the session user, "whoami" shows it with its role.
 * The bug (a stack-free but real overflow, CWE-787): the length limit is 48 while the name field
 * holds 32 bytes, so a long name runs into the role field that follows it.  The fix is one
 * constant: the limit becomes the field size minus the terminator.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

#ifdef FIX
#define MAX_NAME_LEN 31
#else
#define MAX_NAME_LEN 48
#endif

struct session {
    char name[32];
    char role[16];
};

struct session session = { "nobody", "guest" };

void handle(const char *request, char *answer, size_t size)
{
    if (strncmp(request, "login ", 6) == 0) {
        const char *name = request + 6;
        size_t length = strlen(name);

        if (length > MAX_NAME_LEN) {
            snprintf(answer, size, "error: name longer than %d", MAX_NAME_LEN);
            return;
        }
        memcpy((char *)&session, name, length + 1);
        snprintf(answer, size, "logged in");
    } else if (strcmp(request, "whoami") == 0) {
        snprintf(answer, size, "user %.32s role %.15s", session.name, session.role);
    } else {
        snprintf(answer, size, "error: unknown request");
    }
}
