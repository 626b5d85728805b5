/* Grows until the memcg's OOM killer stops it.
 * oom_leak [MiB/s = 16] [give up after seconds = 60]: exits 1 if nothing killed it by then (no limit set?). */
#include <stdio.h>

#include "frame_pointers.h"

#define BLOCK (256 * 1024)

static size_t grown;

/* Mallocs and writes every page here: the memory the OOM killer reclaims was faulted in by this function. */
__attribute__((noinline)) int grow_until_killed(size_t n) {
    for (size_t b = 0; b < n; b++) {
        if (!touched_block(BLOCK))
            return 0;
        grown++;
    }
    return 1;
}

int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 16), give_up = arg_or(argc, argv, 2, 60);
    paced(mib_per_sec * (1 << 20) / BLOCK, give_up, grow_until_killed);
    fprintf(stderr, "oom_leak: still alive after %.0f s and %zu MiB\n", give_up, grown * BLOCK >> 20);
    return 1;
}
