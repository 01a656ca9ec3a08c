/* A single-threaded target for the loader tests.
 *   loop   print "tick N answer A" every 5 ms (nanosleep between lines)
 *   read   block in read(0) and echo each chunk as "got <text>"
 *   hold   print "holding" from inside hold_here() and sit there forever (its return address
 *          stays on the stack)
 *   seccomp  install an allow-all seccomp filter, then behave as "read"
 * SIGUSR1 and SIGRTMIN are counted and reported in each "tick" line as "usr1 N rt M".
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((noipa)) int answer(void) { return 1; }
__attribute__((noipa)) int answer_fixed(void) { return 2; }

__attribute__((noipa)) void hold_here(void)
{
    struct timespec t = {1000, 0};
    printf("holding\n");
    fflush(stdout);
    for (;;) nanosleep(&t, NULL);
}

static volatile sig_atomic_t usr1_count, rt_count;
static void on_usr1(int sig) { (void)sig; usr1_count++; }
static void on_rt(int sig) { (void)sig; rt_count++; }

static void loop(void)
{
    struct timespec t = {0, 5 * 1000 * 1000};
    for (long tick = 0;; tick++) {
        printf("tick %ld answer %d usr1 %d rt %d\n", tick, answer(), (int)usr1_count, (int)rt_count);
        fflush(stdout);
        nanosleep(&t, NULL);
    }
}

static void echo(void)
{
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n <= 0) { printf("read returned %zd\n", n); fflush(stdout); exit(n == 0 ? 0 : 1); }
        buf[n] = 0;
        printf("got %s", buf);
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "loop";
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_rt;
    sigaction(SIGRTMIN, &sa, NULL);
    if (!strcmp(mode, "seccomp")) {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = {1, &allow};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) return 5;
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    if (!strcmp(mode, "read") || !strcmp(mode, "seccomp")) echo();
    else if (!strcmp(mode, "hold")) hold_here();
    else loop();
    return 0;
}
