/* Cache growth: a log written and never read back; its pages stay in the page cache, charged to the memcg, and
 * the kernel reclaims them when memory runs short. No heap growth.
 * cache_growth <file> [MiB per second = 16] [seconds = 8] [hold seconds = 60] */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

static int fd = -1;
static size_t written;

__attribute__((noinline)) int append_log(size_t n) {
    static char chunk[1 << 20];
    memset(chunk, 'x', sizeof chunk);
    for (size_t i = 0; i < n; i++) {
        if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk)
            return 0;
        written++;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cache_growth <file> [MiB/s] [seconds] [hold seconds]\n");
        return 2;
    }
    double mib_per_sec = arg_or(argc, argv, 2, 16), secs = arg_or(argc, argv, 3, 8), hold_secs = arg_or(argc, argv, 4, 60);
    fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    paced(mib_per_sec, secs, append_log);
    fprintf(stderr, "cache_growth: wrote %zu MiB\n", written);
    hold(hold_secs);
    return 0;
}
