/*
 * Loads lib.dll after reserving the DLL's preferred base (0x6f000000), so that the loader must rebase
 * it with its base relocations, then answers name_of(N) for each line N.
 */
#include <stdio.h>
#include <stdlib.h>
#include <windows.h>

int main(void)
{
    char line[64];
    void *taken = VirtualAlloc((void *)0x6f000000, 0x100000, MEM_RESERVE, PAGE_NOACCESS);
    HMODULE lib = LoadLibraryA("lib.dll");
    const char *(*name_of)(int) = (const char *(*)(int))GetProcAddress(lib, "name_of");
    if (!lib || !name_of)
        return 1;
    printf("base %s\n", taken && (ULONG_PTR)lib != 0x6f000000 ? "moved" : "preferred");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        printf("%s\n", name_of(atoi(line)));
        fflush(stdout);
    }
    return 0;
}
