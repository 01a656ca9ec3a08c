/* libpct: percent-decoding of URL components (the library the host program loads). */
#ifndef PCT_H
#define PCT_H

#include <stddef.h>

/* Decode in into out (at most size bytes with the terminator); 0 on success, -1 on bad input. */
int pct_decode(const char *in, char *out, size_t size);

/* How many components the library has decoded since the process started. */
unsigned long pct_decoded(void);

#endif
