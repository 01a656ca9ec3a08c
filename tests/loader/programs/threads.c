/* An 8-thread target for the loader tests:
 *   main     blocked in read(0); forwards each line to the reader thread's pipe ("main got ...")
 *   reader   blocked in read() on that pipe ("reader got ...")
 *   sleeper  x2: nanosleep(1 ms) loops inside sleeper_wait(), counting
 *   spinner  x2: busy loops inside spin_work() for ~200 us, then sleep 2 ms
 *   holder   sits in hold_here() forever (its return address stays on its stack)
 *   printer  prints "tick N answer A" every 5 ms
 * Each thread names itself (/proc/PID/task/TID/comm) after its role.
 * With argv[1] == "churn" a ninth thread creates and joins short-lived threads without end.
 * A line "spawn" on stdin makes main start one more thread ("spawned"), which sits in hold_here().
 * A line "lose" makes main start a thread ("lost") that sets its stack pointer to 0 and spins: a
 * stack in no mapping, which no check can show to be safe.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int pipefd[2];
static volatile unsigned long counters[8];
/* Set by each worker once inside its function, so "ready" means every thread is where it belongs. */
static volatile int entered[6];

__attribute__((noipa)) int answer(void) { return 1; }
__attribute__((noipa)) int answer_fixed(void) { return 2; }

static void nap(long ns) { struct timespec t = {0, ns}; nanosleep(&t, NULL); }

__attribute__((noipa)) void hold_here(void)
{
    struct timespec t = {1000, 0};
    entered[4] = 1;
    for (;;) nanosleep(&t, NULL);
}

__attribute__((noipa)) void sleeper_wait(int slot)
{
    entered[slot] = 1;
    for (;;) { counters[slot]++; nap(1000000); }
}

__attribute__((noipa)) void spin_work(int slot)
{
    entered[slot] = 1;
    for (;;) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        do { counters[slot]++; clock_gettime(CLOCK_MONOTONIC, &b); }
        while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 200000);
        nap(2000000);
    }
}

static void name(const char *comm);

static void *reader(void *arg)
{
    char buf[256];
    (void)arg;
    name("reader");
    entered[5] = 1;
    for (;;) {
        ssize_t n = read(pipefd[0], buf, sizeof buf - 1);
        if (n <= 0) { printf("reader read returned %zd\n", n); fflush(stdout); exit(3); }
        buf[n] = 0;
        printf("reader got %s", buf);
        fflush(stdout);
    }
}

static void name(const char *comm) { pthread_setname_np(pthread_self(), comm); }
static void *sleeper(void *arg) { name("sleeper"); sleeper_wait((int)(long)arg); return NULL; }
static void *spinner(void *arg) { name("spinner"); spin_work((int)(long)arg); return NULL; }
static void *holder(void *arg) { (void)arg; name("holder"); hold_here(); return NULL; }
static void *spawned(void *arg) { (void)arg; name("spawned"); hold_here(); return NULL; }
static void *lost(void *arg)
{
    (void)arg;
    name("lost");
    __asm__ volatile("xor %%esp, %%esp\n1: jmp 1b" ::: "memory"); /* rsp = 0, forever */
    return NULL;
}

__attribute__((noreturn)) static void *printer(void *arg)
{
    (void)arg;
    name("printer");
    for (long tick = 0;; tick++) {
        printf("tick %ld answer %d\n", tick, answer());
        fflush(stdout);
        nap(5000000);
    }
}

static void *short_lived(void *arg) { (void)arg; nap(100000); return NULL; }

__attribute__((noreturn)) static void *churn(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, short_lived, NULL);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    }
}

int main(int argc, char **argv)
{
    pthread_t t;
    if (pipe(pipefd)) return 2;
    pthread_create(&t, NULL, reader, NULL);
    pthread_create(&t, NULL, sleeper, (void *)0L);
    pthread_create(&t, NULL, sleeper, (void *)1L);
    pthread_create(&t, NULL, spinner, (void *)2L);
    pthread_create(&t, NULL, spinner, (void *)3L);
    pthread_create(&t, NULL, holder, NULL);
    pthread_create(&t, NULL, printer, NULL);
    if (argc > 1 && !strcmp(argv[1], "churn")) pthread_create(&t, NULL, churn, NULL);
    for (int i = 0; i < 6; i++)
        while (!entered[i]) nap(100000);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n <= 0) { printf("main read returned %zd\n", n); fflush(stdout); exit(n == 0 ? 0 : 1); }
        buf[n] = 0;
        printf("main got %s", buf);
        fflush(stdout);
        if (!strncmp(buf, "spawn", 5)) { pthread_create(&t, NULL, spawned, NULL); continue; }
        if (!strncmp(buf, "lose", 4)) { pthread_create(&t, NULL, lost, NULL); continue; }
        if (write(pipefd[1], buf, n) != n) exit(4);
    }
}
