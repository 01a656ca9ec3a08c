/*
 * A host that maps libpct only when asked, as a program that dlopen()s a plugin late in its life:
 *   "load PATH"     dlopen(PATH) and look up pct_decode/pct_decoded; answers "loaded" or the error;
 *   "decode TEXT"   answers as samples/16-shared-library's host does, through the looked-up functions;
 *   "fork"          forks a child that only waits (it carries what the parent carries) and answers
 *                   "child PID"; the child is killed when the parent ends.
 * One answer line per request line, on stdout.
 */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <string.h>
#include <unistd.h>

typedef int (*decode_fn)(const char *, char *, size_t);
typedef unsigned long (*count_fn)(void);

/* Kept in globals, not in main's frame: a function pointer left in a stack slot or a saved register
 * reads, to the loader's conservative stack scan, like a return address into pct_decode. */
static decode_fn decode;
static count_fn count;

/* dlopen and dlsym leave pct_decode's address in stack slots below main's frame that later calls
 * (fgets, read) do not overwrite; to the loader's conservative stack scan such a stale word reads like
 * a return address into pct_decode (a thread inside it), so the slots are cleared once the library is
 * loaded, as a test that wants a deterministic apply must. */
static void __attribute__((noinline)) scrub_stack(void)
{
    volatile char zeros[65536];
    size_t i;

    for (i = 0; i < sizeof zeros; i++)
        zeros[i] = 0;
}

/* dlopen PATH and look the two functions up; an error message, or NULL when loaded. */
static const char *__attribute__((noinline)) load(const char *path)
{
    void *library = dlopen(path, RTLD_NOW);

    if (library == NULL)
        return dlerror();
    decode = (decode_fn)dlsym(library, "pct_decode");
    count = (count_fn)dlsym(library, "pct_decoded");
    return decode != NULL && count != NULL ? NULL : "no pct_decode";
}

int main(void)
{
    char request[4096], decoded[4096];

    while (fgets(request, sizeof request, stdin) != NULL) {
        request[strcspn(request, "\r\n")] = '\0';
        if (strncmp(request, "load ", 5) == 0) {
            const char *error = load(request + 5);

            scrub_stack();
            if (error != NULL)
                printf("error: %s\n", error);
            else
                printf("loaded\n");
        } else if (strncmp(request, "decode ", 7) == 0 && decode != NULL) {
            if (decode(request + 7, decoded, sizeof decoded) != 0)
                printf("error: malformed (%lu decoded)\n", count());
            else
                printf("%s (%lu decoded)\n", decoded, count());
        } else if (strcmp(request, "fork") == 0) {
            pid_t child;

            fflush(stdout);
            child = fork();
            if (child == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(0);
                for (;;)
                    pause();
            }
            printf("child %d\n", (int)child);
        } else {
            printf("error: unknown request\n");
        }
        fflush(stdout);
    }
    return 0;
}
