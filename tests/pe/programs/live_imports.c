/*
 * A fix that calls a function the baseline never imported, in a program that keeps running (one
 * answer per line on stdin). -DFIX: answer() calls kernel32's lstrlenA (kernel32 is loaded in every
 * Wine process, so a live apply finds it in its export directory). -DFIX_UNLOADED: answer() calls
 * shlwapi's PathIsRelativeA, a DLL the baseline never loads: a live apply must refuse it.
 */
#include <windows.h>
#include <shlwapi.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) unsigned answer(const char *line)
{
#if defined(FIX_UNLOADED)
    return PathIsRelativeA(line) ? 2 : 3;
#elif defined(FIX)
    return (unsigned)lstrlenA(line);
#else
    return (unsigned)atoi(line) * 0 + 7;
#endif
}

int main(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("%u\n", answer(line));
        fflush(stdout);
    }
    return 0;
}
