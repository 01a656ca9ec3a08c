/*
 * A bank ledger: "balance NAME", "withdraw NAME AMOUNT".
 * The bug (a missing business rule, CWE-840): withdrawals can take an account below zero.  The
 * fix adds an overdraft limit to struct account, which moves the balance field and grows the
 * accounts array.  Live data in the old layout cannot be reinterpreted by new code: the change
 * must be refused.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

struct account {
    char name[16];
#ifdef FIX
    long overdraft_limit;
#endif
    long balance;
};

struct account accounts[] = {
#ifdef FIX
    { "alice", 0, 100 },
    { "bob", 50, 20 },
#else
    { "alice", 100 },
    { "bob", 20 },
#endif
};

struct account *find_account(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof accounts / sizeof accounts[0]; i++)
        if (strcmp(accounts[i].name, name) == 0)
            return &accounts[i];
    return NULL;
}

void handle(const char *request, char *answer, size_t size)
{
    char name[16];
    long amount;
    struct account *account;

    if (sscanf(request, "balance %15s", name) == 1) {
        account = find_account(name);
        if (account == NULL)
            snprintf(answer, size, "error: no account %s", name);
        else
            snprintf(answer, size, "%s has %ld", account->name, account->balance);
    } else if (sscanf(request, "withdraw %15s %ld", name, &amount) == 2) {
        account = find_account(name);
        if (account == NULL || amount <= 0) {
            snprintf(answer, size, "error: bad withdrawal");
            return;
        }
#ifdef FIX
        if (account->balance - amount < -account->overdraft_limit) {
            snprintf(answer, size, "error: %s may not go below %ld", account->name,
                     -account->overdraft_limit);
            return;
        }
#endif
        account->balance -= amount;
        snprintf(answer, size, "%s has %ld", account->name, account->balance);
    } else {
        snprintf(answer, size, "error: unknown request");
    }
}
