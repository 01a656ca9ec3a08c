/*
 * A DLL whose fix adds a table of pointers (each word an absolute address, a DIR64 base relocation
 * in the fix): in a patched DLL the table lives in the package's rodata and needs base relocations
 * of its own, or a DLL loaded away from its ImageBase returns pointers into nowhere.
 */
#ifdef FIX
static const char *const labels[] = {"ZERO", "ONE", "TWO", "THREE"};
#endif
static const char *const names[] = {"zero", "one", "two", "three"};

__declspec(dllexport) const char *name_of(int i)
{
#ifdef FIX
    if (i < 0 || i > 3)
        return "out of range";
    return labels[i];
#else
    return names[i & 3];
#endif
}
