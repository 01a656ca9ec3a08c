/*
 * A console program that waits in a system call inside the function a package replaces, on demand.
 * main() waits for a command line in fgets (outside read_number); "r" makes it read the next line in
 * read_number(), which then waits in fgets (a read on Wine's Unix side) until that line comes: its
 * frames and the return address into main lie on the Windows stack, while the thread's rsp is on Wine's
 * Unix stack. It prints the number read. -DFIX adds one. "s" starts a thread that never waits: it
 * runs Windows code (spin, step) whenever it is stopped, so its frames start at its own registers.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long steps;

__attribute__((noinline)) unsigned long step(unsigned long x)
{
    return x * 2654435761u + 1;
}

static DWORD WINAPI spin(LPVOID unused)
{
    unsigned long x = 1;
    (void)unused;
    for (;;)
        steps = x = step(x);
    return 0;
}

__attribute__((noinline)) int read_number(void)
{
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return -1;
#ifdef FIX
    return atoi(line) + 1;
#else
    return atoi(line);
#endif
}

int main(void)
{
    char command[64];
    while (fgets(command, sizeof command, stdin)) {
        int n = command[0] == 'r' ? read_number() : -2;
        if (command[0] == 's')
            n = CreateThread(NULL, 0, spin, NULL, 0, NULL) ? -3 : -4;
        printf("%d\n", n);
        fflush(stdout);
    }
    return 0;
}
