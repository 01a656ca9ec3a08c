/* The bench's small pair: a record parser whose fix (-DHPKG_BENCH_FIX) adds a bounds check
 * to read_field, the shape of a typical security fix. Built by bench/corpus.py with gcc -O2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIELD_CAP 32
#define MAX_RECORDS 64

struct record {
    char key[FIELD_CAP];
    char value[FIELD_CAP];
    uint32_t checksum;
};

static struct record records[MAX_RECORDS];
static size_t record_count;
static unsigned long lines_seen;

uint32_t fnv1a(const char *text, size_t len)
{
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        hash ^= (unsigned char)text[i];
        hash *= 16777619u;
    }
    return hash;
}

const char *skip_spaces(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* Copies one field up to `stop` into `out`; the baseline trusts the input length. */
int read_field(const char **cursor, char stop, char *out, size_t cap)
{
    const char *p = skip_spaces(*cursor);
    size_t len = 0;
    while (p[len] != '\0' && p[len] != stop && p[len] != '\n')
        len++;
#ifdef HPKG_BENCH_FIX
    if (len >= cap)
        return -1;
#else
    (void)cap;
#endif
    memcpy(out, p, len);
    out[len] = '\0';
    *cursor = p[len] == stop ? p + len + 1 : p + len;
    return (int)len;
}

int parse_line(const char *line, struct record *rec)
{
    const char *cursor = line;
    if (read_field(&cursor, '=', rec->key, sizeof rec->key) <= 0)
        return -1;
    if (read_field(&cursor, '\n', rec->value, sizeof rec->value) < 0)
        return -1;
    rec->checksum = fnv1a(rec->value, strlen(rec->value));
    return 0;
}

const struct record *find_record(const char *key)
{
    for (size_t i = 0; i < record_count; i++)
        if (strcmp(records[i].key, key) == 0)
            return &records[i];
    return NULL;
}

int add_line(const char *line)
{
    lines_seen++;
    if (record_count == MAX_RECORDS)
        return -1;
    if (parse_line(line, &records[record_count]) != 0)
        return -1;
    record_count++;
    return 0;
}

uint32_t table_checksum(void)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < record_count; i++)
        sum = (sum << 5 | sum >> 27) ^ records[i].checksum;
    return sum;
}

void print_records(FILE *out)
{
    for (size_t i = 0; i < record_count; i++)
        fprintf(out, "%s=%s (%08x)\n", records[i].key, records[i].value, records[i].checksum);
    fprintf(out, "%zu records from %lu lines, checksum %08x\n", record_count, lines_seen, table_checksum());
}

int main(int argc, char **argv)
{
    char line[256];
    FILE *in = argc > 1 ? fopen(argv[1], "r") : stdin;
    if (in == NULL) {
        perror(argv[1]);
        return 1;
    }
    while (fgets(line, sizeof line, in) != NULL)
        if (add_line(line) != 0)
            fprintf(stderr, "rejected: %s", line);
    const struct record *name = find_record("name");
    if (name != NULL)
        printf("name is %s\n", name->value);
    print_records(stdout);
    return 0;
}
