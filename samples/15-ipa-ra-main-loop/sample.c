/*
 * A request scorer whose main loop and callee share one file: each request line is answered
 * with its sequence number, its length and its score.
 * The bug (improper input validation, CWE-20): score() accepts any byte, so control or
 * punctuation characters get a score.  The fix rejects a line with a character outside the
 * allowed set; to check it calls strspn(), so the fixed score() clobbers every call-clobbered
 * register where the baseline score() touched only a few.
 *
 * In a plain -O2 build GCC's -fipa-ra lets main() keep values in registers that the baseline
 * score() leaves alone, so the fixed main() differs too -- and main() never returns, so the
 * fix cannot be applied to a running plain build.  With -flive-patching=inline-clone main()
 * is the same in both builds and only score() changes.
 */
#include <stdio.h>
#include <string.h>

#define ALLOWED "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_."

/*
 * The score of a request: the sum of its letters' positions in the alphabet, or -1 when it is
 * not acceptable.  noinline stands for the size this function has in the real program.
 */
__attribute__((noinline)) long score(const char *line, size_t length)
{
    long total = 0;
    size_t i;

#ifdef FIX
    if (strspn(line, ALLOWED) != length)
        return -1;
#endif
    for (i = 0; i < length; i++) {
        char c = line[i];

        if (c >= 'a' && c <= 'z')
            total += c - 'a' + 1;
        else if (c >= 'A' && c <= 'Z')
            total += c - 'A' + 1;
    }
    return total;
}

int main(void)
{
    char line[4096];
    unsigned long sequence = 0;

    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t length = strcspn(line, "\r\n");
        long points;

        line[length] = '\0';
        points = score(line, length);
        sequence++;
        if (points < 0)
            printf("%lu: rejected (%zu bytes)\n", sequence, length);
        else
            printf("%lu: score %ld (%zu bytes)\n", sequence, points, length);
        fflush(stdout);
    }
    return 0;
}
