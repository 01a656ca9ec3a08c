/*
 * The pause curve's target: `busy_threads N [MS]` starts N-1 workers (N threads in all), each calling
 * work() — the patched function — about every MS milliseconds (default 1), prints "ready N" once all exist, and runs
 * until killed. The fix (-DFIX) changes what work() adds, so a package has one site on a hot path.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_ulong total;
static atomic_int started;

__attribute__((noinline)) unsigned long work(unsigned long seed)
{
    unsigned long x = seed;
    for (int i = 0; i < 64; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
#ifdef FIX
    return x ^ 2;
#else
    return x ^ 1;
#endif
}

static long period_ms = 1;

static void *worker(void *arg)
{
    unsigned long seed = (unsigned long)arg;
    struct timespec ms = {period_ms / 1000, (period_ms % 1000) * 1000000};

    atomic_fetch_add(&started, 1);
    for (;;) {
        seed = work(seed);
        atomic_fetch_add(&total, seed & 1);
        nanosleep(&ms, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 17;
    period_ms = argc > 2 ? atol(argv[2]) : 1;
    pthread_attr_t attr;

    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 1; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    while (atomic_load(&started) < n - 1)
        usleep(1000);
    printf("ready %d\n", n);
    fflush(stdout);
    for (;;)
        pause();
}
