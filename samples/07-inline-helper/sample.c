/*
 * A key-value store: "put KEY VALUE" stores a pair, "get KEY" reads it back.
 * The bug (improper neutralisation of delimiters, CWE-140): is_token_char() accepts every
 * printable character, so a value can smuggle ';' or '=' into the store's "key=value;" record.
 * The fix is in a static inline helper that two validators use; both change with it.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

static inline int is_token_char(int c)
{
#ifdef FIX
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
#else
    return c > ' ' && c <= '~';
#endif
}

/* A key is 1 to 15 token characters. */
int valid_key(const char *key)
{
    size_t i;

    for (i = 0; key[i] != '\0'; i++)
        if (i >= 15 || !is_token_char((unsigned char)key[i]))
            return 0;
    return i > 0;
}

/* A value is 0 to 47 token characters. */
int valid_value(const char *value)
{
    size_t i;

    for (i = 0; value[i] != '\0'; i++)
        if (i >= 47 || !is_token_char((unsigned char)value[i]))
            return 0;
    return 1;
}

static char records[1024];

void handle(const char *request, char *answer, size_t size)
{
    char key[64], value[64];

    if (sscanf(request, "put %63s %63s", key, value) == 2) {
        if (!valid_key(key) || !valid_value(value)) {
            snprintf(answer, size, "error: invalid key or value");
            return;
        }
        if (strlen(records) + strlen(key) + strlen(value) + 3 > sizeof records) {
            snprintf(answer, size, "error: store full");
            return;
        }
        strcat(records, key);
        strcat(records, "=");
        strcat(records, value);
        strcat(records, ";");
        snprintf(answer, size, "stored %s", key);
    } else if (strcmp(request, "dump") == 0) {
        snprintf(answer, size, "%s", records);
    } else {
        snprintf(answer, size, "error: unknown request");
    }
}
