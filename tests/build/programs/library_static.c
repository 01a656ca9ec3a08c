/* A library with an exported variable and a static one. Stripped, .dynsym still names
 * `exported_count` (with a section index strip could not update), not `limit`. */
#ifdef FIX_EXPORTED
int exported_count = 2;
#else
int exported_count = 1;
#endif
#ifdef FIX
static int limit = 16;
#else
static int limit = 64;
#endif

int get_limit(void) { return limit + exported_count; }
void set_limit(int value) { limit = value; }
