/* A tiny fast HTTP/1.1 backend for router benchmarks: one epoll thread, keep-alive, a fixed
 * 2-byte body for every request ("ok"), so the router and not the app is the bottleneck.
 *
 *   gcc -O2 -o fastserver bench/fastserver.c && ./fastserver 127.0.0.2 8000
 *
 * Requests are counted by their blank line ("\r\n\r\n"); bodies are not expected (GET only).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESP[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

struct conn { int fd; int match; };

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s HOST PORT\n", argv[0]); return 2; }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) { perror("address"); return 2; }
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) { perror("bind"); return 1; }
    nonblock(ls);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    char buf[16384];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {  /* listener: accept all pending */
                int fd;
                while ((fd = accept(ls, NULL, NULL)) >= 0) {
                    nonblock(fd);
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                close(c->fd);
                free(c);
                continue;
            }
            int answers = 0;
            static const char END[] = "\r\n\r\n";
            for (ssize_t k = 0; k < r; k++) {  /* count request ends across reads */
                c->match = (buf[k] == END[c->match]) ? c->match + 1 : (buf[k] == '\r');
                if (c->match == 4) { answers++; c->match = 0; }
            }
            for (int k = 0; k < answers; k++) {
                if (write(c->fd, RESP, sizeof RESP - 1) < 0) break;
            }
        }
    }
}
