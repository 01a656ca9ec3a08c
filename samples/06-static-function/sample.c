/*
 * An access check: "ROLES read|write RESOURCE" answers granted or denied, where ROLES is the
 * session's comma-separated role list.
 * The bug (an incorrect comparison, CWE-697): has_role() compares only as many characters as
 * the session's role has, so the roles "a" and "adm" count as "admin".  The fix is in a static
 * function that both the read and the write path call.
 */
#include <stdio.h>
#include <string.h>

#include "sample.h"

/* Does the comma-separated role list hold the role a resource requires? */
static int has_role(const char *roles, const char *required)
{
    const char *role = roles;

    while (*role != '\0') {
        size_t length = strcspn(role, ",");
#ifdef FIX
        if (length == strlen(required) && strncmp(role, required, length) == 0)
            return 1;
#else
        if (length > 0 && strncmp(role, required, length) == 0)
            return 1;
#endif
        role += length;
        if (*role == ',')
            role++;
    }
    return 0;
}

static const char admin_prefix[] = "/admin/";

int may_read(const char *roles, const char *resource)
{
    if (strncmp(resource, admin_prefix, sizeof admin_prefix - 1) != 0)
        return 1;
    return has_role(roles, "admin") || has_role(roles, "auditor");
}

int may_write(const char *roles, const char *resource)
{
    if (strncmp(resource, admin_prefix, sizeof admin_prefix - 1) == 0)
        return has_role(roles, "admin");
    return has_role(roles, "editor") || has_role(roles, "admin");
}

void handle(const char *request, char *answer, size_t size)
{
    char roles[64], verb[8], resource[128];
    int granted;

    if (sscanf(request, "%63s %7s %127s", roles, verb, resource) != 3) {
        snprintf(answer, size, "error: expected ROLES read|write RESOURCE");
        return;
    }
    if (strcmp(verb, "read") == 0)
        granted = may_read(roles, resource);
    else if (strcmp(verb, "write") == 0)
        granted = may_write(roles, resource);
    else {
        snprintf(answer, size, "error: unknown verb %s", verb);
        return;
    }
    snprintf(answer, size, "%s %s %s: %s", roles, verb, resource, granted ? "granted" : "denied");
}
