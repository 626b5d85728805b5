/* A service that queues each reply on a socket pair whose other end nobody reads: the buffers stay queued in the
 * kernel, charged to the writer's socket (v2 `sock`), until the sockets are closed, which never happens.
 * socket_backlog [MiB/s = 16] [seconds = 8] [hold seconds = 60] */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "common.h"

#define REPLY (64 * 1024)
/* What one unread socket takes before its writer would block (the default send buffer holds about 200 KiB). */
#define PER_SOCKET (192 * 1024)

static char reply[REPLY];
static size_t queued;

static int send_reply(int fd, size_t len) {
    for (size_t sent = 0; sent < len;) {
        ssize_t n = write(fd, reply, len - sent < REPLY ? len - sent : REPLY);
        if (n < 0)
            return errno == EAGAIN;
        sent += (size_t)n;
        queued += (size_t)n;
    }
    return 1;
}

/* One upstream connection per request, written to and never read from. */
static int open_upstream(size_t id) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0)
        return 0;
    fcntl(pair[0], F_SETFL, O_NONBLOCK);
    memset(reply, (int)id, sizeof reply);
    return send_reply(pair[0], PER_SOCKET);
}

int main(int argc, char **argv) {
    double mib = arg_or(argc, argv, 1, 16), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    raise_fd_limit();
    serve_requests(mib * (1 << 20) / PER_SOCKET, secs, open_upstream);
    fprintf(stderr, "socket_backlog: %zu MiB queued on %zu sockets\n", queued >> 20, requests_served);
    hold(hold_secs);
    return 0;
}
