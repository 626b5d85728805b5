/* Shared by the e2e workloads (C and C++): argument parsing and pacing. Every workload takes
 *   <rate per second> <seconds of activity> <seconds to hold afterwards>
 * so a test can size its run, and holding keeps leaked memory outstanding until the tracer has written its report. */
#ifndef LEAKTRACE_WORKLOAD_COMMON_H
#define LEAKTRACE_WORKLOAD_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* argv[i] as a number, or `fallback` when absent; "inf" is accepted. */
static inline double arg_or(int argc, char **argv, int i, double fallback) {
    return i < argc ? strtod(argv[i], NULL) : fallback;
}

/* Calls step(n) so that `per_sec` units are done per second, for `secs` seconds; stops early if step returns 0. */
static inline void paced(double per_sec, double secs, int (*step)(size_t n)) {
    double start = now();
    size_t done = 0;
    for (double t = 0; t < secs; t = now() - start) {
        size_t due = (size_t)(t * per_sec) + 1;
        if (due > done) {
            if (!step(due - done))
                return;
            done = due;
        }
        usleep(5000);
    }
}

#define PAGE 4096

/* xorshift: cheap, and the same sequence in every run (the benchmark's loops). */
static inline unsigned next_random(void) {
    static unsigned x = 2463534242u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

/* The request loop of the ordinary workloads: handle(id) for ids 0, 1, 2, ..., `per_sec` requests a second for
 * `secs` seconds (paced); it stops early when a request fails (returns 0). */
static int (*request_handler)(size_t id);
static size_t requests_served;

static inline int serve_due(size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!request_handler(requests_served++))
            return 0;
    return 1;
}

static inline void serve_requests(double per_sec, double secs, int (*handle)(size_t id)) {
    request_handler = handle;
    paced(per_sec, secs, serve_due);
}

/* Lifts the soft limit on open descriptors to the hard one: the descriptor leaks open thousands. */
static inline void raise_fd_limit(void) {
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
}

static inline void hold(double secs) {
    double end = now() + secs;
    while (isfinite(end) ? now() < end : 1)
        usleep(100000);
}

#endif
