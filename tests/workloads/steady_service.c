/* A steady service: it builds its working set at start, then serves requests that read it and use short-lived
 * buffers; nothing grows. Given a crash time, a request after that many seconds writes through a stale pointer
 * (SIGSEGV), as a use-after-free does.
 * steady_service [MiB = 32] [seconds = 60] [crash after seconds = never] */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define BLOCK (1 << 20)

static char **blocks;
static size_t nblocks;
static double started, crash_after;
/* Volatile: the compiler must not see that the pointer is bad and replace the store with a trap. */
static int *volatile stale = (int *)(uintptr_t)64;

static void build_working_set(size_t mib) {
    blocks = calloc(mib, sizeof *blocks);
    for (nblocks = 0; blocks && nblocks < mib; nblocks++) {
        blocks[nblocks] = malloc(BLOCK);
        if (!blocks[nblocks])
            break;
        memset(blocks[nblocks], 1, BLOCK);
    }
}

static int handle_request(size_t id) {
    char *buf = malloc(16 * 1024);
    if (!buf)
        return 0;
    snprintf(buf, 16 * 1024, "request %zu", id);
    if (nblocks)
        blocks[id % nblocks][(id * PAGE) % BLOCK] += buf[8];
    free(buf);
    if (now() - started > crash_after)
        *stale = (int)id;
    return 1;
}

int main(int argc, char **argv) {
    double mib = arg_or(argc, argv, 1, 32), secs = arg_or(argc, argv, 2, 60);
    crash_after = arg_or(argc, argv, 3, INFINITY);
    started = now();
    build_working_set((size_t)mib);
    serve_requests(200, secs, handle_request);
    return 0;
}
