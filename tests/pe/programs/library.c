/*
 * A DLL whose fix clamps one exported function: built with -shared and stripped (-s), its functions
 * are named only by the export table.
 */
__declspec(dllexport) int lib_limit(int n)
{
#ifdef FIX
    return n > 16 ? 16 : n;
#else
    return n;
#endif
}

__declspec(dllexport) int lib_twice(int n)
{
    return 2 * n;
}
