/* A kernel-object leak: file descriptors that are never closed, each holding kernel memory (pipe: inode, files,
 * pipe_inode_info and one buffer page with a byte in it; socketpair: sockets and a queued skb).
 * pipe_leak [per second = 200] [seconds = 8] [hold seconds = 60] [pipes|sockets = pipes] */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "frame_pointers.h"

static size_t leaked;

__attribute__((noinline)) int leak_pipes(size_t n) {
    for (size_t i = 0; i < n; i++) {
        int fds[2];
        if (sys4(SYS_pipe2, (long)fds, 0, 0, 0) != 0)
            return 0;
        sys4(SYS_write, fds[1], (long)"x", 1, 0);
        leaked++;
    }
    return 1;
}

__attribute__((noinline)) int leak_sockets(size_t n) {
    for (size_t i = 0; i < n; i++) {
        int fds[2];
        if (sys4(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, (long)fds) != 0)
            return 0;
        sys4(SYS_write, fds[1], (long)"x", 1, 0);
        leaked++;
    }
    return 1;
}

int main(int argc, char **argv) {
    double per_sec = arg_or(argc, argv, 1, 200), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    int sockets = argc > 4 && strcmp(argv[4], "sockets") == 0;
    raise_fd_limit();
    paced(per_sec, secs, sockets ? leak_sockets : leak_pipes);
    fprintf(stderr, "pipe_leak: leaked %zu %s\n", leaked, sockets ? "socket pairs" : "pipes");
    hold(hold_secs);
    return 0;
}
