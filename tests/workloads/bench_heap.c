/* The --heap benchmark's malloc churn (cargo xtask bench): ordinary C calling libc's malloc and free in a tight
 * loop, sizes 16..4096 bytes, a few blocks held at a time (op = one free and one malloc).
 * bench_heap <seconds of phase 1> [<seconds of phase 2> ...]
 * Prints "ready" once warm, then waits for a line on stdin before it starts: a tracer attached meanwhile probes a
 * process that is already running, as it would a service. Then it churns through its phases back to back,
 * prints "ops <n> seconds <s>" for each on stdout, and stays, idle, until its stdin closes: the tracer can take a
 * last look at it. */
#include <stdio.h>

#include "common.h"

#define SLOTS 8
#define MAX_PHASES 64

static void *slots[SLOTS];

static int malloc_pair(void) {
    unsigned r = next_random();
    size_t slot = r % SLOTS;
    free(slots[slot]);
    char *p = malloc(16 + (r >> 8) % 4081);
    if (!p)
        return 0;
    /* Used, as a program uses what it allocates. */
    *(volatile char *)p = (char)r;
    slots[slot] = p;
    return 1;
}

/* Churns for `secs` seconds; returns the pairs done, or 0 when malloc failed. */
static size_t churn(double secs, double *elapsed) {
    size_t ops = 0;
    double start = now();
    *elapsed = 0;
    while (*elapsed < secs) {
        /* The clock is read every batch only: the loop itself is what is measured. */
        for (int i = 0; i < 64; i++) {
            if (!malloc_pair())
                return 0;
        }
        ops += 64;
        *elapsed = now() - start;
    }
    return ops;
}

int main(int argc, char **argv) {
    if (argc - 1 > MAX_PHASES) {
        fprintf(stderr, "bench_heap: at most %d phases\n", MAX_PHASES);
        return 2;
    }
    for (int i = 0; i < 64 * SLOTS; i++)
        if (!malloc_pair())
            return 1;
    printf("ready\n");
    fflush(stdout);
    char go[16];
    if (!fgets(go, sizeof go, stdin))
        return 1;
    /* Printed at the end: stdio's own buffers are not allocated while a phase is measured. */
    size_t ops[MAX_PHASES];
    double secs[MAX_PHASES];
    int phases = argc - 1;
    for (int i = 0; i < phases; i++) {
        ops[i] = churn(arg_or(argc, argv, i + 1, 1), &secs[i]);
        if (!ops[i]) {
            perror("bench_heap");
            return 1;
        }
    }
    for (int i = 0; i < phases; i++)
        printf("ops %zu seconds %.6f\n", ops[i], secs[i]);
    fflush(stdout);
    while (fgets(go, sizeof go, stdin))
        ;
    return 0;
}
