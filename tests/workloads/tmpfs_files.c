/* A service that spools every upload to a tmpfs file and never removes it: the files' pages are shmem, charged to
 * its memcg and beyond reclaim's reach.
 * tmpfs_files <directory on a tmpfs> [MiB/s = 8] [seconds = 8] [hold seconds = 60] */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define UPLOAD (1 << 20)

static const char *dir;
static char body[UPLOAD];

static int spool_upload(size_t id) {
    char path[4096];
    snprintf(path, sizeof path, "%s/upload-%zu", dir, id);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return 0;
    memset(body, (int)id + 1, sizeof body);
    ssize_t written = write(fd, body, sizeof body);
    close(fd);
    return written == (ssize_t)sizeof body;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tmpfs_files <dir> [MiB/s] [seconds] [hold seconds]\n");
        return 2;
    }
    dir = argv[1];
    double rate = arg_or(argc, argv, 2, 8), secs = arg_or(argc, argv, 3, 8), hold_secs = arg_or(argc, argv, 4, 60);
    serve_requests(rate, secs, spool_upload);
    fprintf(stderr, "tmpfs_files: %zu uploads kept\n", requests_served);
    hold(hold_secs);
    return 0;
}
