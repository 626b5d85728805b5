/* Four worker threads, each leaking from glibc's arena of its own thread: every job's 64 KiB result (below the
 * mmap threshold, so carved from the thread's arena, not the main heap) is kept in the worker's list forever,
 * by keep_result. Each job also mallocs and frees scratch buffers. Ordinary code, -O2 -g, pthreads.
 * thread_arenas [MiB per second, all threads = 8] [seconds = 8] [hold seconds = 60] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define THREADS 4
#define RESULT (64 * 1024)
#define MAX_RESULTS 8192

struct worker {
    pthread_t thread;
    double per_sec, secs;
    char *results[MAX_RESULTS];
    size_t n;
};

static struct worker workers[THREADS];

/* The leak: the result is kept in the worker's list, never dropped. */
__attribute__((noinline)) int keep_result(struct worker *w, const char *scratch) {
    if (w->n >= MAX_RESULTS)
        return 0;
    char *r = malloc(RESULT);
    if (!r)
        return 0;
    memset(r, scratch[0], RESULT);
    w->results[w->n++] = r;
    return 1;
}

__attribute__((noinline)) int run_job(struct worker *w, size_t id) {
    char *scratch = malloc(8192);
    if (!scratch)
        return 0;
    snprintf(scratch, 8192, "job %zu", id);
    int ok = keep_result(w, scratch);
    free(scratch);
    return ok;
}

static void *work(void *arg) {
    struct worker *w = arg;
    double start = now();
    size_t done = 0;
    for (double t = 0; t < w->secs; t = now() - start) {
        for (size_t due = (size_t)(t * w->per_sec) + 1; done < due; done++)
            if (!run_job(w, done))
                return NULL;
        usleep(5000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 8), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    for (int i = 0; i < THREADS; i++) {
        workers[i].per_sec = mib_per_sec * (1 << 20) / RESULT / THREADS;
        workers[i].secs = secs;
        pthread_create(&workers[i].thread, NULL, work, &workers[i]);
    }
    size_t total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(workers[i].thread, NULL);
        total += workers[i].n;
    }
    fprintf(stderr, "thread_arenas: %zu results, %zu MiB\n", total, total * RESULT >> 20);
    hold(hold_secs);
    return 0;
}
