/* The host of greet_lib.c: one name per line in, greet()'s result and text out. */
#include <stdio.h>
#include <string.h>

int greet(const char *name, char *out, size_t size);

int main(void)
{
    char line[256], text[64];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        text[0] = 0;
        int n = greet(line, text, sizeof text);
        printf("%d %s\n", n, n < 0 ? "-" : text);
        fflush(stdout);
    }
    return 0;
}
