/*
 * A protocol dispatcher: "op N ARG" runs operation N (0-7) of a small admin protocol.
 * The bug (missing authorisation, CWE-862): operation 5, "dump configuration", answers anyone.
 * The fix changes one case of a switch that GCC compiles to a jump table.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

static long generation = 1;
static char last_note[64] = "none";

void run_operation(int op, const char *arg, char *answer, size_t size)
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
        snprintf(answer, size, "reloaded, generation %ld", generation);
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
        snprintf(answer, size, "config: db_password=hunter2 generation=%ld", generation);
#endif
        break;
    case 6:
        snprintf(answer, size, "length %zu", strlen(arg));
        break;
    case 7:
        snprintf(answer, size, "bye %s", arg);
        break;
    default:
        snprintf(answer, size, "error: no operation %d", op);
        break;
    }
}

void handle(const char *request, char *answer, size_t size)
{
    int op, used = 0;

    if (sscanf(request, "op %d %n", &op, &used) != 1) {
        snprintf(answer, size, "error: expected op N ARG");
        return;
    }
    run_operation(op, request + used, answer, size);
}
