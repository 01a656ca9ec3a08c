/*
 * A console program that waits in a system call inside the function a package replaces, on demand.
 * main() waits for a command line in fgets (outside read_number); "r" makes it read the next line in
 * read_number(), which then waits in fgets (a read on Wine's Unix side) until that line comes: its
 * frames and the return address into main lie on the Windows stack, while the thread's rsp is on Wine's
 * Unix stack. It prints the number read. -DFIX adds one.
 */
#include <stdio.h>
#include <stdlib.h>

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
        printf("%d\n", n);
        fflush(stdout);
    }
    return 0;
}
