/*
 * A slot store: "set I V" stores V in slot I, "get I" reads it back.
 * The bug (an out-of-bounds read, CWE-125): read_slot() checks only the lower bound, so
 * "get 4" reads past the four slots into the session key that follows them.
 */
#include <stdio.h>
#include <stdlib.h>

#include "sample.h"

#define SLOT_COUNT 4

struct store {
    long slots[SLOT_COUNT];
    long session_key;
};

struct store store = { { 0, 0, 0, 0 }, 424242 };

/*
 * Read slot index into *value; 0 on success, -1 when the index is out of range.
 * noinline: in the program this sample stands for, the store and its callers are separate
 * files; here it keeps the leaf a leaf (otherwise -O2 inlines it into handle()).
 */
__attribute__((noinline)) int read_slot(const struct store *s, long index, long *value)
{
#ifdef FIX
    if (index < 0 || index >= SLOT_COUNT)
        return -1;
#else
    if (index < 0)
        return -1;
#endif
    *value = s->slots[index];
    return 0;
}

/* Write value into slot index; 0 on success, -1 when the index is out of range. */
int write_slot(struct store *s, long index, long value)
{
    if (index < 0 || index >= SLOT_COUNT)
        return -1;
    s->slots[index] = value;
    return 0;
}

void handle(const char *request, char *answer, size_t size)
{
    long index, value;

    if (sscanf(request, "set %ld %ld", &index, &value) == 2) {
        if (write_slot(&store, index, value) != 0)
            snprintf(answer, size, "error: slot %ld out of range", index);
        else
            snprintf(answer, size, "slot %ld := %ld", index, value);
    } else if (sscanf(request, "get %ld", &index) == 1) {
        if (read_slot(&store, index, &value) != 0)
            snprintf(answer, size, "error: slot %ld out of range", index);
        else
            snprintf(answer, size, "slot %ld = %ld", index, value);
    } else {
        snprintf(answer, size, "error: unknown request");
    }
}
