/*
 * A record codec: "encode TEXT" escapes TEXT for a comma-separated record; "record A B" joins
 * the encodings of A and B with a comma and decodes the first field back out of the record.
 * The bug (incomplete escaping, CWE-116): encode_field() escapes ',' with a backslash but not
 * the backslash itself, so a field ending in a backslash swallows the comma after it and the
 * next field with it (field injection: "record x\ y" decodes to the first field "x,y").  The fix
 * touches two functions at once: encode_field() escapes '\\' and decode_field() undoes it.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

/* Escape text into out; returns the length written, or -1 when out is too small. */
long encode_field(const char *text, char *out, size_t size)
{
    size_t used = 0;

    for (; *text != '\0'; text++) {
#ifdef FIX
        int escape = *text == ',' || *text == '\\';
#else
        int escape = *text == ',';
#endif
        if (used + 3 > size)
            return -1;
        if (escape)
            out[used++] = '\\';
        out[used++] = *text;
    }
    out[used] = '\0';
    return (long)used;
}

/* Undo encode_field() for one field; stops at an unescaped ','. */
long decode_field(const char *field, char *out, size_t size)
{
    size_t used = 0;

    for (; *field != '\0' && *field != ','; field++) {
        if (used + 2 > size)
            return -1;
#ifdef FIX
        if (*field == '\\' && (field[1] == ',' || field[1] == '\\'))
            field++;
#else
        if (*field == '\\' && field[1] == ',')
            field++;
#endif
        out[used++] = *field;
    }
    out[used] = '\0';
    return (long)used;
}

void handle(const char *request, char *answer, size_t size)
{
    char first[256], second[256], encoded[1024], decoded[1024];

    if (strncmp(request, "encode ", 7) == 0) {
        if (encode_field(request + 7, encoded, sizeof encoded) < 0)
            snprintf(answer, size, "error: too long");
        else
            snprintf(answer, size, "%s", encoded);
    } else if (sscanf(request, "record %255s %255s", first, second) == 2) {
        if (encode_field(first, encoded, sizeof encoded / 2) < 0 ||
            encode_field(second, encoded + strlen(encoded) + 1, sizeof encoded / 2) < 0) {
            snprintf(answer, size, "error: too long");
            return;
        }
        encoded[strlen(encoded)] = ',';
        decode_field(encoded, decoded, sizeof decoded);
        snprintf(answer, size, "record %s, first field %s", encoded, decoded);
    } else {
        snprintf(answer, size, "error: unknown request");
    }
}
