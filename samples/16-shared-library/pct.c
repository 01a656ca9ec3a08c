/*
 * libpct, the library of the shared-library sample: percent-decoding for URL components.
 * The bug (a NUL byte injection, CWE-158): "%00" decodes to a NUL, so "evil.php%00.jpg" comes
 * out as "evil.php" and passes a check on the suffix made before decoding.  The fix rejects
 * "%00" and every malformed escape.  Only pct_decode() changes; the host program is the same.
 */
#include "pct.h"

static unsigned long decoded;

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int pct_decode(const char *in, char *out, size_t size)
{
    size_t used = 0;

    while (*in != '\0') {
        char c = *in++;

        if (c == '%' && in[0] != '\0' && in[1] != '\0') {
            int high = hex_value(in[0]), low = hex_value(in[1]);

#ifdef FIX
            if (high < 0 || low < 0 || (high == 0 && low == 0))
                return -1;
#else
            if (high < 0 || low < 0)
                high = low = 0;
#endif
            c = (char)(high << 4 | low);
            in += 2;
        }
        if (used + 1 >= size)
            return -1;
        out[used++] = c;
    }
    out[used] = '\0';
    decoded++;
    return 0;
}

unsigned long pct_decoded(void)
{
    return decoded;
}
