/*
 * The host program of the shared-library sample: "decode TEXT" answers with what libpct makes
 * of TEXT and how many components libpct has decoded so far.  The host is the same for the
 * baseline and the fixed library; LD_LIBRARY_PATH=out/<build> picks the library.
 */
#include <stdio.h>
#include <string.h>

#include "pct.h"

int main(void)
{
    char request[4096], decoded[4096];

    while (fgets(request, sizeof request, stdin) != NULL) {
        request[strcspn(request, "\r\n")] = '\0';
        if (strncmp(request, "decode ", 7) != 0)
            printf("error: unknown request\n");
        else if (pct_decode(request + 7, decoded, sizeof decoded) != 0)
            printf("error: malformed (%lu decoded)\n", pct_decoded());
        else
            printf("%s (%lu decoded)\n", decoded, pct_decoded());
        fflush(stdout);
    }
    return 0;
}
