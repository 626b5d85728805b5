/* A heap leak as services have them: an unbounded cache that only grows.
 * heap_leak [MiB/s = 8] [seconds = 8] [hold seconds = 60] */
#include <stdio.h>

#include "frame_pointers.h"

#define BLOCK (256 * 1024)
#define MAX_BLOCKS (1 << 16)

/* Fixed-size, so no libc code (realloc) touches new memory on the leak's behalf; not static, so the compiler cannot
 * prove the blocks unused and drop the writes. */
char *cache[MAX_BLOCKS];
size_t cached;

/* Mallocs blocks and writes every page here, so the page faults that charge the memcg have this function as leaf. */
__attribute__((noinline)) int leak_heap_blocks(size_t n) {
    for (size_t b = 0; b < n && cached < MAX_BLOCKS; b++) {
        volatile char *p = touched_block(BLOCK);
        if (!p)
            return 0;
        cache[cached++] = (char *)p;
    }
    return cached < MAX_BLOCKS;
}

int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 8), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    paced(mib_per_sec * (1 << 20) / BLOCK, secs, leak_heap_blocks);
    fprintf(stderr, "heap_leak: leaked %zu MiB\n", cached * BLOCK >> 20);
    hold(hold_secs);
    return 0;
}
