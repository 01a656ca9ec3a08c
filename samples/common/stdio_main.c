/*
 * The request loop shared by the stdio samples: one request line in, one answer line out,
 * flushed, until end of input.
 *
 * It lives in its own translation unit so that the compiler cannot inline a sample's
 * handle() (or anything below it) into main(): main() never returns, so a fix that changed
 * it could never be applied to a running process.  A test can therefore send a request,
 * read the answer, patch the process, and send the next request to the same process.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

int main(void)
{
    static char request[4096];
    static char answer[4096];

    while (fgets(request, sizeof request, stdin) != NULL) {
        request[strcspn(request, "\r\n")] = '\0';
        answer[0] = '\0';
        handle(request, answer, sizeof answer);
        fputs(answer, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    return 0;
}
