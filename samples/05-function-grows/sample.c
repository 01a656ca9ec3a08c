/*
 * A hex decoder: "hex DIGITS" answers with the bytes the digits encode.
 * The bug (improper input validation, CWE-20): any character is taken for a digit and an odd
 * count reads the terminator as a digit, so "hex 4g" decodes to garbage instead of failing.
 * The fix validates every digit and the count; handle() grows well past its old size.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

static int nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void handle(const char *request, char *answer, size_t size)
{
    const char *digits = request + 4;
    size_t count, i;
    char *out = answer;

    if (strncmp(request, "hex ", 4) != 0) {
        snprintf(answer, size, "error: unknown request");
        return;
    }
    count = strlen(digits);
#ifdef FIX
    if (count % 2 != 0) {
        snprintf(answer, size, "error: odd number of digits (%zu)", count);
        return;
    }
    if (count / 2 >= size) {
        snprintf(answer, size, "error: %zu digits do not fit", count);
        return;
    }
    for (i = 0; i < count; i++) {
        if (nibble(digits[i]) < 0) {
            snprintf(answer, size, "error: '%c' at %zu is not a hex digit", digits[i], i);
            return;
        }
    }
#endif
    for (i = 0; i < count; i += 2)
        *out++ = (char)((nibble(digits[i]) & 0xf) << 4 | (nibble(digits[i + 1]) & 0xf));
    *out = '\0';
    for (out = answer; *out != '\0'; out++)
        if (*out < ' ' || *out > '~')
            *out = '?';
}
