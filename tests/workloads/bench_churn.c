/* Overhead benchmark workloads (cargo xtask bench): each stresses one path leaktrace traces, as fast as it can, and
 * prints how many operations it completed.
 * bench_churn <page|kobj|malloc|mixed|worker> <seconds>
 *   page:   anonymous page churn: mmap 64 pages, touch each, munmap (op = one page)
 *   kobj:   kernel object churn: pipe2, write a byte (a buffer page), close both ends (op = one pipe)
 *   malloc: malloc/free of 16..1024 bytes among 1024 live slots, no system calls once warm (op = one pair)
 *   mixed:  a service-like request: a pipe round trip, a 32 KiB heap buffer filled and freed, and every 8th
 *           request a 256 KiB mapping touched and unmapped (op = one request)
 *   worker: the mixed requests served by a worker thread, as a service's thread pool serves them (its stack is a
 *           thread's: a stack copy runs its full length there, not to the main stack's end)
 * Output: "ops <n> seconds <s>" on stdout. */
#include <malloc.h>
#include <pthread.h>
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

struct run {
    const char *mode;
    double secs;
    size_t ops;
    double elapsed;
    int status;
};

static void *serve(void *arg) {
    struct run *r = arg;
    double start = now();
    while (r->elapsed < r->secs) {
        /* Check the clock every batch only: the loops themselves are what is measured. */
        for (int i = 0; i < 64; i++) {
            size_t done;
            if (strcmp(r->mode, "page") == 0)
                done = touch_mapping(MAP_PAGES);
            else if (strcmp(r->mode, "kobj") == 0)
                done = pipe_round_trip(1);
            else if (strcmp(r->mode, "malloc") == 0)
                done = malloc_pair();
            else if (strcmp(r->mode, "mixed") == 0)
                done = request();
            else {
                fprintf(stderr, "bench_churn: unknown mode %s\n", r->mode);
                r->status = 2;
                return NULL;
            }
            if (!done) {
                perror("bench_churn");
                r->status = 1;
                return NULL;
            }
            r->ops += done;
        }
        r->elapsed = now() - start;
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "page";
    struct run r = { .mode = mode, .secs = arg_or(argc, argv, 2, 2) };
    /* No trimming and no mmap'd chunks: the malloc and mixed loops make no system calls for their heap. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    for (size_t i = 0; i < 4 * SLOTS; i++)
        malloc_pair();
    if (strcmp(mode, "worker") == 0) {
        pthread_t worker;
        r.mode = "mixed";
        if (pthread_create(&worker, NULL, serve, &r) != 0 || pthread_join(worker, NULL) != 0) {
            perror("bench_churn: worker");
            return 1;
        }
    } else {
        serve(&r);
    }
    if (r.status)
        return r.status;
    printf("ops %zu seconds %.6f\n", r.ops, r.elapsed);
    return 0;
}
