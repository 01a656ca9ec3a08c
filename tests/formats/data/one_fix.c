/* A one-function fix for the package-size test: a small key=value record store whose fix
 * (-DHPKG_FIX) adds a bounds check to copy_field only, the shape of a typical security fix. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIELD_CAP 24
#define MAX_RECORDS 32

struct record {
    char key[FIELD_CAP];
    char value[FIELD_CAP];
    uint32_t hash;
};

static struct record records[MAX_RECORDS];
static size_t record_count;

__attribute__((noinline)) size_t field_length(const char *in, char stop)
{
    size_t len = 0;
    while (in[len] != '\0' && in[len] != stop && in[len] != '\n')
        len++;
    return len;
}

/* Copies one field up to `stop` into `out`; the baseline trusts the input length. */
__attribute__((noinline)) int copy_field(char *out, size_t cap, const char *in, char stop)
{
    size_t len = field_length(in, stop);
#ifdef HPKG_FIX
    if (len >= cap)
        return -1;
#else
    (void)cap;
#endif
    memcpy(out, in, len);
    out[len] = '\0';
    return (int)len;
}

__attribute__((noinline)) uint32_t fnv1a(const char *text)
{
    uint32_t hash = 2166136261u;
    while (*text)
        hash = (hash ^ (unsigned char)*text++) * 16777619u;
    return hash;
}

__attribute__((noinline)) int parse_record(const char *line, struct record *rec)
{
    int key_len = copy_field(rec->key, sizeof rec->key, line, '=');
    if (key_len <= 0 || line[key_len] != '=')
        return -1;
    if (copy_field(rec->value, sizeof rec->value, line + key_len + 1, '\n') < 0)
        return -1;
    rec->hash = fnv1a(rec->key);
    return 0;
}

__attribute__((noinline)) const struct record *lookup(const char *key)
{
    uint32_t hash = fnv1a(key);
    for (size_t i = 0; i < record_count; i++)
        if (records[i].hash == hash && strcmp(records[i].key, key) == 0)
            return &records[i];
    return NULL;
}

__attribute__((noinline)) int store(const char *line)
{
    struct record rec;
    if (record_count == MAX_RECORDS || parse_record(line, &rec) != 0)
        return -1;
    records[record_count++] = rec;
    return 0;
}

__attribute__((noinline)) void dump(FILE *out)
{
    for (size_t i = 0; i < record_count; i++)
        fprintf(out, "%-*s = %s (%08x)\n", FIELD_CAP, records[i].key, records[i].value, records[i].hash);
}

int main(int argc, char **argv)
{
    char line[256];
    while (fgets(line, sizeof line, stdin))
        if (store(line) != 0)
            fprintf(stderr, "bad record: %s", line);
    for (int i = 1; i < argc; i++) {
        const struct record *rec = lookup(argv[i]);
        printf("%s: %s\n", argv[i], rec ? rec->value : "(none)");
    }
    dump(stdout);
    return 0;
}
