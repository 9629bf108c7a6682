/*
 * exprobe benchmark responder: accepts TCP connections on INADDR_ANY (so every
 * 127.x.y.z works), sends a one-line banner and closes.  One epoll thread per
 * listening socket group, SO_REUSEPORT, a listen backlog as large as the kernel
 * allows (somaxconn), so the responder is never the reason a connection is lost.
 *
 * Built by bench/run.py at bench time (gcc -O2); never committed as a binary.
 *
 * usage: responder BANNER PORT [PORT...]
 * stdin commands (one per line): "s" prints "accepted N" (connections since the last
 * "s") and resets the counter; "q" or EOF exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PORTS 16

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BANNER PORT [PORT...]\n", argv[0]);
        return 2;
    }
    char banner[512];
    snprintf(banner, sizeof banner, "%s\r\n", argv[1]);
    size_t banner_len = strlen(banner);
    int ep = epoll_create1(0);
    int nports = argc - 2 > MAX_PORTS ? MAX_PORTS : argc - 2;
    int lfds[MAX_PORTS];
    for (int i = 0; i < nports; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[i + 2])),
                                 .sin_addr.s_addr = htonl(INADDR_ANY)};
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("bind");
            return 1;
        }
        if (listen(fd, 1 << 16) < 0) { /* the kernel caps it at net.core.somaxconn */
            perror("listen");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        lfds[i] = fd;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    printf("ready\n");
    fflush(stdout);

    unsigned long accepted = 0;
    struct epoll_event events[64];
    char cmd[64];
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == 0) {
                ssize_t r = read(0, cmd, sizeof cmd);
                if (r <= 0 || cmd[0] == 'q') return 0;
                if (cmd[0] == 's') {
                    printf("accepted %lu\n", accepted);
                    fflush(stdout);
                    accepted = 0;
                }
                continue;
            }
            /* Drain the accept queue: one wakeup can carry hundreds of connections. */
            for (int k = 0; k < 4096; k++) {
                int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0) break;
                accepted++;
                /* The client may already have reset (connect-only checks): ignore errors. */
                (void)send(c, banner, banner_len, MSG_NOSIGNAL | MSG_DONTWAIT);
                close(c);
            }
        }
    }
    (void)lfds;
    return 0;
}
