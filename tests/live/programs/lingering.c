/*
 * A function that stays busy: one thread sleeps inside linger() for good, the main thread answers
 * stdin lines ("ping" -> "pong N", N = linger's rounds so far). The fix (-DFIX) counts two per
 * round; a package for it must be refused while a thread is inside linger(), naming both.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile unsigned long rounds;

__attribute__((noinline)) void linger(void)
{
    for (;;) {
        usleep(20000);
#ifdef FIX
        rounds += 2;
#else
        rounds += 1;
#endif
    }
}

static void *sleeper(void *arg)
{
    (void)arg;
    linger();
    return NULL;
}

int main(void)
{
    pthread_t thread;
    char line[256];

    pthread_create(&thread, NULL, sleeper, NULL);
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL) {
        printf("pong %lu\n", rounds);
        fflush(stdout);
    }
    return 0;
}
