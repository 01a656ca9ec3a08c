/*
 * A command server: the first word of a request picks a callback from a table.
 * The bug (an externally controlled format string, CWE-134): cmd_echo() passes the caller's
 * text to snprintf() as the format.  The fix changes one callback; the table, which still holds
 * the address of the old one, is unchanged.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

typedef void command_fn(const char *arg, char *answer, size_t size);

static long echoes;

static void cmd_ping(const char *arg, char *answer, size_t size)
{
    (void)arg;
    snprintf(answer, size, "pong");
}

static void cmd_echo(const char *arg, char *answer, size_t size)
{
    echoes++;
#ifdef FIX
    snprintf(answer, size, "%s", arg);
#else
    snprintf(answer, size, arg);
#endif
}

static void cmd_count(const char *arg, char *answer, size_t size)
{
    (void)arg;
    snprintf(answer, size, "%ld echoes", echoes);
}

static void cmd_upper(const char *arg, char *answer, size_t size)
{
    size_t i;

    for (i = 0; arg[i] != '\0' && i + 1 < size; i++)
        answer[i] = (arg[i] >= 'a' && arg[i] <= 'z') ? (char)(arg[i] - 'a' + 'A') : arg[i];
    answer[i] = '\0';
}

static const struct command {
    const char *name;
    command_fn *run;
} commands[] = {
    { "ping", cmd_ping },
    { "echo", cmd_echo },
    { "count", cmd_count },
    { "upper", cmd_upper },
};

void handle(const char *request, char *answer, size_t size)
{
    size_t length = strcspn(request, " ");
    const char *arg = request[length] == ' ' ? request + length + 1 : request + length;
    size_t i;

    for (i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strlen(commands[i].name) == length && strncmp(commands[i].name, request, length) == 0) {
            commands[i].run(arg, answer, size);
            return;
        }
    }
    snprintf(answer, size, "error: unknown command");
}
