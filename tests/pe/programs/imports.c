/*
 * Two functions whose fix only switches the imported callee: parse() calls the C runtime through
 * mingw's import stubs (`call atoi` → `jmp *__imp_atoi(%rip)`), stamp() calls kernel32 through the
 * IAT directly (windows.h declares it dllimport: `call *__imp_GetTickCount(%rip)`). Built with
 * -DFIX, each calls another import with the same code around it; unchanged() calls the same imports
 * in both builds, at addresses that shift.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int parse(const char *text)
{
#ifdef FIX
    return (int)atol(text);
#else
    return atoi(text);
#endif
}

__attribute__((noinline)) unsigned stamp(void)
{
#ifdef FIX
    return GetCurrentProcessId();
#else
    return GetTickCount();
#endif
}

__attribute__((noinline)) unsigned unchanged(const char *text)
{
    return (unsigned)strlen(text) + GetCurrentThreadId();
}

int main(int argc, char **argv)
{
    printf("%d %u %u\n", parse(argc > 1 ? argv[1] : "7"), stamp() & 0, unchanged(argv[0]) & 0);
    return 0;
}
