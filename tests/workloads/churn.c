/* Busy but not leaking: allocates, touches and frees 1 MiB blocks.
 * churn [MiB/s = 100] [seconds = 8] [hold seconds = 0] */
#include <malloc.h>
#include <stdio.h>

#include "frame_pointers.h"

#define BLOCK (1 << 20)

static size_t churned;

/* Every block is a fresh mapping (see main), so each round faults pages in here and free() returns them. */
__attribute__((noinline)) int churn_alloc_free(size_t n) {
    for (size_t b = 0; b < n; b++) {
        volatile char *p = touched_block(BLOCK);
        if (!p)
            return 0;
        free((void *)p);
        churned++;
    }
    return 1;
}

int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 100), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 0);
    /* A fixed threshold: glibc would otherwise raise it after the first free and recycle the same heap pages, and
     * nothing would be allocated from the kernel after the first round. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    paced(mib_per_sec, secs, churn_alloc_free);
    fprintf(stderr, "churn: allocated and freed %zu MiB\n", churned);
    hold(hold_secs);
    return 0;
}
