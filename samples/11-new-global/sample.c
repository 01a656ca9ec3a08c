/*
 * A login check: "login NAME PASSWORD" answers welcome or denied.
 * The bug (no limit on failed attempts, CWE-307): a password can be guessed without end.  The
 * fix adds a global counter of consecutive failures and locks the login after three; the new
 * variable starts at zero when the fix goes in.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

#define MAX_FAILURES 3

struct user {
    const char *name;
    const char *password;
};

static const struct user users[] = {
    { "alice", "correct-horse" },
    { "bob", "battery-staple" },
};

unsigned long logins;
#ifdef FIX
unsigned long failed_logins;
#endif

/* The password check: 1 when name and password match a user. */
int check_password(const char *name, const char *password)
{
    size_t i;

    for (i = 0; i < sizeof users / sizeof users[0]; i++)
        if (strcmp(users[i].name, name) == 0 && strcmp(users[i].password, password) == 0)
            return 1;
    return 0;
}

void login(const char *name, const char *password, char *answer, size_t size)
{
#ifdef FIX
    if (failed_logins >= MAX_FAILURES) {
        snprintf(answer, size, "error: locked after %lu failures", failed_logins);
        return;
    }
    if (!check_password(name, password)) {
        failed_logins++;
        snprintf(answer, size, "denied");
        return;
    }
    failed_logins = 0;
#else
    if (!check_password(name, password)) {
        snprintf(answer, size, "denied");
        return;
    }
#endif
    logins++;
    snprintf(answer, size, "welcome %s (login %lu)", name, logins);
}

void handle(const char *request, char *answer, size_t size)
{
    char name[32], password[64];

    if (sscanf(request, "login %31s %63s", name, password) == 2)
        login(name, password, answer, size);
    else
        snprintf(answer, size, "error: expected login NAME PASSWORD");
}
