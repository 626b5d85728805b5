/* A thread leak: worker threads started per request and never joined or ended (each blocks forever), so the task
 * count rises with the kernel stacks and thread stacks it costs.
 * thread_leak [threads per second = 40] [seconds = 8] [hold seconds = 60] */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

/* Each worker touches a little of its stack, as real request handlers do, then waits forever. */
static void *stuck_worker(void *arg) {
    volatile char scratch[32 * 1024];
    memset((char *)scratch, 1, sizeof scratch);
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static size_t started;

__attribute__((noinline)) int leak_threads(size_t n) {
    for (size_t i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, stuck_worker, NULL) != 0)
            return 0;
        started++;
    }
    return 1;
}

int main(int argc, char **argv) {
    double per_sec = arg_or(argc, argv, 1, 40), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    paced(per_sec, secs, leak_threads);
    fprintf(stderr, "thread_leak: %zu threads left running\n", started);
    hold(hold_secs);
    return 0;
}
