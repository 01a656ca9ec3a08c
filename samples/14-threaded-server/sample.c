/*
 * A multithreaded line server: `server PORT` (0 picks a free port) listens on 127.0.0.1, prints
 * "listening on PORT", and eight worker threads accept connections and answer each request
 * line with one line.  "GET /PATH" answers the page and the server-wide request count.
 * The bug (unbounded path length, CWE-770): a path of any length is answered; the fix answers
 * "414" above 32 characters.  handle_request() is on every worker's hot path; the request
 * counter is state that must carry over a live patch.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WORKERS 8
#define MAX_PATH_LEN 32

static atomic_ulong requests;

/* Answer one request line; called by every worker for every line it reads. */
void handle_request(const char *line, char *answer, size_t size)
{
    unsigned long n = atomic_fetch_add(&requests, 1) + 1;
    const char *path;

    if (strncmp(line, "GET /", 5) != 0) {
        snprintf(answer, size, "400 bad request (#%lu)", n);
        return;
    }
    path = line + 4;
#ifdef FIX
    if (strlen(path) > MAX_PATH_LEN) {
        snprintf(answer, size, "414 path too long (#%lu)", n);
        return;
    }
#endif
    snprintf(answer, size, "200 %s (#%lu)", path, n);
}

/* Serve one connection: a line in, a line out, until the client closes it. */
static void serve(int fd)
{
    char line[4096], answer[4200];
    FILE *in = fdopen(fd, "r");

    if (in == NULL) {
        close(fd);
        return;
    }
    while (fgets(line, sizeof line, in) != NULL) {
        size_t length;

        line[strcspn(line, "\r\n")] = '\0';
        handle_request(line, answer, sizeof answer - 1);
        length = strlen(answer);
        answer[length++] = '\n';
        if (write(fd, answer, length) != (ssize_t)length)
            break;
    }
    fclose(in);
}

static void *worker(void *arg)
{
    int listener = *(int *)arg;

    for (;;) {
        int fd = accept(listener, NULL, NULL);

        if (fd >= 0)
            serve(fd);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct sockaddr_in address = { .sin_family = AF_INET };
    socklen_t length = sizeof address;
    pthread_t threads[WORKERS];
    int listener, one = 1, i;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    address.sin_port = htons((unsigned short)atoi(argv[1]));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 64) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
        perror("listen");
        return 1;
    }
    for (i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, worker, &listener);
    /* Only now is the server ready: every worker exists (a loader must stop them all). */
    printf("listening on %d\n", ntohs(address.sin_port));
    fflush(stdout);
    for (i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    return 0;
}
