/* Calls the hand-laid-out functions of chained.S: "5 4 2" (the fix: "5 0 2"). */
#include <stdio.h>

int split_entry(int);
int other(int);

int main(void)
{
    printf("%d %d %d\n", split_entry(4), split_entry(-4), other(1));
    return 0;
}
