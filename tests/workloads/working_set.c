/* A service with a fixed working set: it allocates it at start-up as fast as it can, then serves, touching its
 * working set and allocating and freeing small buffers per request; nothing grows. Sized near or above the memcg
 * limit it plateaus near the limit or is killed while building it.
 * working_set [MiB = 32] [hold seconds = 60] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame_pointers.h"

#define BLOCK (1 << 20)

static char **blocks;
static size_t nblocks;

__attribute__((noinline)) void build_working_set(size_t mib) {
    blocks = calloc(mib, sizeof *blocks);
    for (nblocks = 0; blocks && nblocks < mib; nblocks++) {
        blocks[nblocks] = (char *)touched_block(BLOCK);
        if (!blocks[nblocks])
            break;
    }
}

/* One request: reads a page of the working set and uses a short-lived buffer. */
__attribute__((noinline)) int serve(size_t n) {
    for (size_t i = 0; i < n; i++) {
        char *buf = malloc(64 * 1024);
        if (!buf)
            return 0;
        memset(buf, (int)i, 64 * 1024);
        if (nblocks)
            blocks[i % nblocks][(i * PAGE) % BLOCK] += buf[7];
        free(buf);
    }
    return 1;
}

int main(int argc, char **argv) {
    double mib = arg_or(argc, argv, 1, 32), hold_secs = arg_or(argc, argv, 2, 60);
    build_working_set((size_t)mib);
    fprintf(stderr, "working_set: %zu MiB built\n", nblocks);
    paced(200, hold_secs, serve);
    return 0;
}
