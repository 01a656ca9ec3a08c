/* Three threads that never block, each spinning inside deep_spin() with a 20 kB frame: threads whose
 * stack pointer /proc/PID/task/TID/syscall never shows ("running"), whose stacks are deeper than the
 * window's stack buffer allows an idle thread. main blocks in read(0) and exits at end of input. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define SPINNERS 3
static volatile int entered[SPINNERS];

__attribute__((noipa)) int never_called(void) { return 7; } /* code no thread is ever inside */

__attribute__((noipa)) void deep_spin(int slot)
{
    volatile char frame[20 << 10];
    for (unsigned i = 0; i < sizeof frame; i += 512)
        frame[i] = (char)i;
    entered[slot] = 1;
    for (;;)
        frame[0]++;
}

static void *spinner(void *arg)
{
    deep_spin((int)(long)arg);
    return NULL;
}

int main(void)
{
    pthread_t thread;
    for (long i = 0; i < SPINNERS; i++)
        pthread_create(&thread, NULL, spinner, (void *)i);
    for (int i = 0; i < SPINNERS; i++)
        while (!entered[i])
            usleep(1000);
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
