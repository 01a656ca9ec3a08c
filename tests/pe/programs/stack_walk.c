/*
 * A stack walk from a callee of a replaced function: frames_to_main() asks the Windows unwinder
 * (RtlCaptureStackBackTrace, which unwinds each frame with the exception directory) how many frames
 * lie between it and main. work() has a 512-byte frame, so the walk only gets past it with work()'s
 * RUNTIME_FUNCTION; in a patched file work() runs in the package's code, and the answer is right only
 * if the package's .pdata entry made it into the exception directory. -DFIX lowers the limit.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef FIX
#define LIMIT 5
#else
#define LIMIT 10
#endif

int main(void);

__attribute__((noinline)) int frames_to_main(void)
{
    void *frames[62];
    USHORT n = RtlCaptureStackBackTrace(0, 62, frames, NULL);
    for (USHORT i = 0; i < n; i++)
        if ((char *)frames[i] >= (char *)main && (char *)frames[i] < (char *)main + 256)
            return i;
    return -1;
}

__attribute__((noinline)) int work(int x)
{
    volatile char buffer[512];
    memset((char *)buffer, x, sizeof buffer);
    if (x > LIMIT)
        x = LIMIT;
    return x + buffer[7] * 0 + frames_to_main() * 1000;
}

int main(void)
{
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        printf("%d\n", work(atoi(line)));
        fflush(stdout);
    }
    return 0;
}
