/* The one interface between a stdio sample and the shared request loop in stdio_main.c. */
#ifndef SAMPLE_H
#define SAMPLE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Answer one request line (newline removed) by writing one line of text into answer. */
void handle(const char *request, char *answer, size_t size);

#ifdef __cplusplus
}
#endif

#endif
