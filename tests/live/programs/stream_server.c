/*
 * A 16-worker line server for the live-apply stream test: `stream_server` listens on a free port of
 * 127.0.0.1, prints "listening on PORT" once all sixteen workers exist, and answers each request
 * line "GET /PATH" with "200 /PATH (#N)", N the server-wide request count. The fix (-DFIX) answers
 * "414 path too long (#N)" for paths over 32 characters; answer() is on every worker's hot path.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WORKERS 16
#define MAX_PATH_LEN 32

static atomic_ulong served;

void answer(const char *line, char *out, size_t size)
{
    unsigned long n = atomic_fetch_add(&served, 1) + 1;
    const char *path = line + 4;

    if (strncmp(line, "GET /", 5) != 0) {
        snprintf(out, size, "400 bad request (#%lu)", n);
        return;
    }
#ifdef FIX
    if (strlen(path) > MAX_PATH_LEN) {
        snprintf(out, size, "414 path too long (#%lu)", n);
        return;
    }
#endif
    snprintf(out, size, "200 %s (#%lu)", path, n);
}

static void *worker(void *arg)
{
    int listener = *(int *)arg;
    char line[1024], out[1100];

    for (;;) {
        int fd = accept(listener, NULL, NULL);
        FILE *in;

        if (fd < 0)
            continue;
        in = fdopen(fd, "r");
        while (in != NULL && fgets(line, sizeof line, in) != NULL) {
            size_t length;

            line[strcspn(line, "\r\n")] = '\0';
            answer(line, out, sizeof out - 1);
            length = strlen(out);
            out[length++] = '\n';
            if (write(fd, out, length) != (ssize_t)length)
                break;
        }
        if (in != NULL)
            fclose(in);
        else
            close(fd);
    }
    return NULL;
}

int main(void)
{
    struct sockaddr_in address = { .sin_family = AF_INET };
    socklen_t length = sizeof address;
    pthread_t threads[WORKERS];
    int listener = socket(AF_INET, SOCK_STREAM, 0), i;

    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 64) != 0 || getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
        perror("listen");
        return 1;
    }
    for (i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, worker, &listener);
    printf("listening on %d\n", ntohs(address.sin_port));
    fflush(stdout);
    for (i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    return 0;
}
