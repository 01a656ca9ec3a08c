/*
 * The Windows counterpart of samples/14-threaded-server: `server PORT` (0 picks a free port)
 * listens on 127.0.0.1 with Winsock, prints "listening on PORT", and eight worker threads
 * (CreateThread) accept connections and answer each request line with one line.
 * "GET /PATH" answers the page and the server-wide request count.
 * The bug (unbounded path length, CWE-770): a path of any length is answered; the fix answers
 * "414" above 32 characters.  handle_request() is on every worker's hot path; the request
 * counter (InterlockedIncrement) is state that must carry over a live patch.
 */
#include <winsock2.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKERS 8
#define MAX_PATH_LEN 32

static volatile LONG requests;

/* Answer one request line; called by every worker for every line it reads. */
__declspec(noinline) void handle_request(const char *line, char *answer, size_t size)
{
    unsigned long n = (unsigned long)InterlockedIncrement(&requests);
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
static void serve(SOCKET fd)
{
    char line[4096], answer[4200];
    size_t used = 0;

    for (;;) {
        char *end = memchr(line, '\n', used);

        if (end == NULL) {
            int got;

            if (used == sizeof line)
                break; /* a line longer than the buffer: drop the connection */
            got = recv(fd, line + used, (int)(sizeof line - used), 0);
            if (got <= 0)
                break;
            used += (size_t)got;
            continue;
        }
        *end = '\0';
        if (end > line && end[-1] == '\r')
            end[-1] = '\0';
        handle_request(line, answer, sizeof answer - 1);
        strcat(answer, "\n");
        if (send(fd, answer, (int)strlen(answer), 0) != (int)strlen(answer))
            break;
        used -= (size_t)(end + 1 - line);
        memmove(line, end + 1, used);
    }
    closesocket(fd);
}

static DWORD WINAPI worker(LPVOID arg)
{
    SOCKET listener = *(SOCKET *)arg;

    for (;;) {
        SOCKET fd = accept(listener, NULL, NULL);

        if (fd != INVALID_SOCKET)
            serve(fd);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_in address = { 0 };
    int length = sizeof address;
    HANDLE threads[WORKERS];
    static SOCKET listener;
    WSADATA wsa;
    int i;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
        fprintf(stderr, "WSAStartup failed\n");
        return 1;
    }
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)atoi(argv[1]));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener == INVALID_SOCKET || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 64) != 0 || getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
        fprintf(stderr, "listen: error %d\n", WSAGetLastError());
        return 1;
    }
    for (i = 0; i < WORKERS; i++)
        threads[i] = CreateThread(NULL, 0, worker, &listener, 0, NULL);
    /* Only now is the server ready: every worker exists (a loader must stop them all). */
    printf("listening on %d\n", ntohs(address.sin_port));
    fflush(stdout);
    WaitForMultipleObjects(WORKERS, threads, TRUE, INFINITE);
    return 0;
}
