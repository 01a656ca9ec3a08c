/* A writable table of handlers (PIE: relocated pointer words in .data); the fix swaps two entries
 * and changes no code. Stripped, no symbol names the table: only its bytes say it changed. */
#include <stdio.h>
#include <stdlib.h>

static int allow(int x) { return x + 1; }
static int deny(int x) { return -x; }

#ifdef FIX
int (*handlers[2])(int) = {deny, allow};
#else
int (*handlers[2])(int) = {allow, deny};
#endif

int main(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int i = atoi(line);
        printf("%d\n", handlers[i & 1](i));
    }
    return 0;
}
