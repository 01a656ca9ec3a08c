/*
 * A ticket office: "ticket NAME" issues the next ticket number; the count lives in a static
 * local of issue_ticket() and every answer shows it.
 * The bug (unchecked input length, CWE-1284): a name of any length is accepted and printed
 * into the ticket.  The fix rejects names longer than 12 characters; the running count must
 * carry over into the fixed function.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

void issue_ticket(const char *name, char *answer, size_t size)
{
    static unsigned long issued;

#ifdef FIX
    if (strlen(name) > 12) {
        snprintf(answer, size, "error: name too long (%lu issued)", issued);
        return;
    }
#endif
    issued++;
    snprintf(answer, size, "ticket %lu for %s", issued, name);
}

void handle(const char *request, char *answer, size_t size)
{
    if (strncmp(request, "ticket ", 7) == 0)
        issue_ticket(request + 7, answer, size);
    else
        snprintf(answer, size, "error: unknown request");
}
