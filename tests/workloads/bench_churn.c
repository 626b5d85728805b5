/* Overhead benchmark workloads (cargo xtask bench): each stresses one path leaktrace traces, as fast as it can, and
 * prints how many operations it completed.
 * bench_churn <page|kobj|malloc|mixed> <seconds>
 *   page:   anonymous page churn: mmap 64 pages, touch each, munmap (op = one page)
 *   kobj:   kernel object churn: pipe2, write a byte (a buffer page), close both ends (op = one pipe)
 *   malloc: malloc/free of 16..1024 bytes among 1024 live slots, no system calls once warm (op = one pair)
 *   mixed:  a service-like request: a pipe round trip, a 32 KiB heap buffer filled and freed, and every 8th
 *           request a 256 KiB mapping touched and unmapped (op = one request)
 * Output: "ops <n> seconds <s>" on stdout. */
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#define SLOTS 1024
#define MAP_PAGES 64

static void *slots[SLOTS];

static size_t touch_mapping(size_t pages) {
    size_t len = pages * PAGE;
    volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    for (size_t i = 0; i < len; i += PAGE)
        p[i] = 1;
    munmap((void *)p, len);
    return pages;
}

static size_t pipe_round_trip(size_t bytes) {
    static char buf[4096];
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    size_t ok = write(fds[1], buf, bytes) == (ssize_t)bytes && read(fds[0], buf, bytes) == (ssize_t)bytes;
    close(fds[0]);
    close(fds[1]);
    return ok;
}

static size_t malloc_pair(void) {
    unsigned r = next_random();
    size_t slot = r % SLOTS;
    free(slots[slot]);
    slots[slot] = malloc(16 + (r >> 16) % 1009);
    return slots[slot] != NULL;
}

static size_t request(void) {
    static size_t n;
    char *buf = malloc(32 << 10);
    if (!buf)
        return 0;
    memset(buf, (int)n, 32 << 10);
    free(buf);
    size_t ok = pipe_round_trip(512);
    if (++n % 8 == 0)
        touch_mapping(MAP_PAGES);
    return ok;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "page";
    double secs = arg_or(argc, argv, 2, 2);
    /* No trimming and no mmap'd chunks: the malloc and mixed loops make no system calls for their heap. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    for (size_t i = 0; i < 4 * SLOTS; i++)
        malloc_pair();
    size_t ops = 0;
    double start = now(), elapsed = 0;
    while (elapsed < secs) {
        /* Check the clock every batch only: the loops themselves are what is measured. */
        for (int i = 0; i < 64; i++) {
            size_t done;
            if (strcmp(mode, "page") == 0)
                done = touch_mapping(MAP_PAGES);
            else if (strcmp(mode, "kobj") == 0)
                done = pipe_round_trip(1);
            else if (strcmp(mode, "malloc") == 0)
                done = malloc_pair();
            else if (strcmp(mode, "mixed") == 0)
                done = request();
            else {
                fprintf(stderr, "bench_churn: unknown mode %s\n", mode);
                return 2;
            }
            if (!done) {
                perror("bench_churn");
                return 1;
            }
            ops += done;
        }
        elapsed = now() - start;
    }
    printf("ops %zu seconds %.6f\n", ops, elapsed);
    return 0;
}
