/* A descriptor leak written as services are: each request calls an upstream through a pipe (or a socket pair) that
 * libc makes, writes the request into it and never closes it, so the kernel keeps the pipe (inode, files,
 * pipe_inode_info and a buffer page with the request in it) or the sockets and a queued skb. Ordinary code: libc's
 * pipe2/socketpair/write, built with -O2 -g and no frame pointers, so the system calls are made from inside libc and
 * call_upstream is not the leaf of the user stack.
 * upstream_pipes [requests per second = 200] [seconds = 8] [hold seconds = 60] [pipes|sockets = pipes] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

static int use_sockets;
static size_t leaked;

/* Opens a channel to the upstream and sends it the request; the channel is never closed (the bug). */
__attribute__((noinline)) int call_upstream(const char *request, size_t len) {
    int fds[2];
    int made = use_sockets ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) : pipe2(fds, O_CLOEXEC);
    if (made != 0) {
        perror("upstream_pipes: cannot reach the upstream");
        return 0;
    }
    if (write(fds[1], request, len) != (ssize_t)len)
        return 0;
    leaked++;
    return 1;
}

/* One request: formats what the upstream is asked, then calls it. */
__attribute__((noinline)) int handle_request(size_t id) {
    char request[64];
    int len = snprintf(request, sizeof request, "GET /item/%zu\n", id);
    return call_upstream(request, (size_t)len);
}


int main(int argc, char **argv) {
    double per_sec = arg_or(argc, argv, 1, 200), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    use_sockets = argc > 4 && strcmp(argv[4], "sockets") == 0;
    raise_fd_limit();
    serve_requests(per_sec, secs, handle_request);
    fprintf(stderr, "upstream_pipes: leaked %zu %s\n", leaked, use_sockets ? "socket pairs" : "pipes");
    hold(hold_secs);
    return 0;
}
