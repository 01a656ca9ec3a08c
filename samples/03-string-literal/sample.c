/*
 * The response headers of a small web API: "headers" lists the CORS policy it sends.
 * The bug (CWE-942, a permissive cross-origin policy): the header allows every origin.  The fix
 * changes one string literal and no code.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

#ifdef FIX
#define ALLOWED_ORIGIN "https://app.example.org"
#else
#define ALLOWED_ORIGIN "*"
#endif

/* Write the cross-origin header the API sends with every response. */
void cors_header(char *answer, size_t size)
{
    snprintf(answer, size, "Access-Control-Allow-Origin: " ALLOWED_ORIGIN);
}

void handle(const char *request, char *answer, size_t size)
{
    if (strcmp(request, "headers") == 0)
        cors_header(answer, size);
    else if (strcmp(request, "ping") == 0)
        snprintf(answer, size, "pong");
    else
        snprintf(answer, size, "error: unknown request");
}
