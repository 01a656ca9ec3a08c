/* A dense switch (a jump table), a live global and a new string: for PIE and non-PIE builds. */
#include <stdio.h>
#include <string.h>

static long generation = 1;
static char last_note[64] = "none";

__attribute__((noinline)) void run_operation(int op, const char *arg, char *answer, size_t size)
{
    switch (op) {
    case 0:
        snprintf(answer, size, "pong %s", arg);
        break;
    case 1:
        snprintf(answer, size, "generation %ld", generation);
        break;
    case 2:
        generation++;
        snprintf(answer, size, "reloaded %ld", generation);
        break;
    case 3:
        snprintf(last_note, sizeof last_note, "%s", arg);
        snprintf(answer, size, "noted");
        break;
    case 4:
        snprintf(answer, size, "note: %s", last_note);
        break;
    case 5:
#ifdef FIX
        snprintf(answer, size, "error: operation 5 needs the admin channel");
#else
        snprintf(answer, size, "config generation=%ld", generation);
#endif
        break;
    case 6:
        snprintf(answer, size, "length %zu", strlen(arg));
        break;
    default:
        snprintf(answer, size, "error: no operation %d", op);
        break;
    }
}

int main(void)
{
    char line[256], answer[256];
    int op;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%d", &op) != 1)
            continue;
        run_operation(op, line, answer, sizeof answer);
        puts(answer);
    }
    return 0;
}
