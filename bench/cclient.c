/*
 * The practical ceiling for a connect sweep: a plain C epoll client, non-blocking
 * connect(), reset on close (SO_LINGER 0), CONCURRENCY sockets in flight.  Reference
 * column of bench/run.py; built there with gcc -O2, never committed as a binary.
 *
 * usage: cclient HOSTS_FILE PORT CONCURRENCY TIMEOUT_MS
 * prints: "open N closed N filtered N other N"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long counts[4]; /* open closed filtered other */

static void finish(int fd, int err) {
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
    if (err == 0) counts[0]++;
    else if (err == ECONNREFUSED) counts[1]++;
    else if (err == ETIMEDOUT || err == EHOSTUNREACH) counts[2]++;
    else counts[3]++;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s HOSTS_FILE PORT CONCURRENCY TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) { perror("hosts"); return 2; }
    int port = atoi(argv[2]), conc = atoi(argv[3]);
    double timeout = atoi(argv[4]) / 1000.0;
    int ep = epoll_create1(0);
    double *deadline = calloc(1 << 20, sizeof(double)); /* by fd */
    int *live = calloc(conc, sizeof(int));
    int nlive = 0, eof = 0;
    char line[128];
    while (!eof || nlive > 0) {
        while (!eof && nlive < conc) {
            if (!fgets(line, sizeof line, f)) { eof = 1; break; }
            line[strcspn(line, "\r\n")] = 0;
            if (!line[0]) continue;
            struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
            if (inet_pton(AF_INET, line, &sa.sin_addr) != 1) { counts[3]++; continue; }
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) { finish(fd, 0); continue; }
            if (errno != EINPROGRESS) { finish(fd, errno); continue; }
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            deadline[fd] = now() + timeout;
            live[nlive++] = fd;
        }
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 50);
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd, err = 0;
            socklen_t el = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            deadline[fd] = -1;
            finish(fd, err);
        }
        double t = now();
        int j = 0;
        for (int i = 0; i < nlive; i++) {
            int fd = live[i];
            if (deadline[fd] < 0) continue; /* finished above */
            if (t >= deadline[fd]) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                finish(fd, ETIMEDOUT);
                continue;
            }
            live[j++] = fd;
        }
        nlive = j;
    }
    printf("open %ld closed %ld filtered %ld other %ld\n", counts[0], counts[1], counts[2],
           counts[3]);
    return 0;
}
