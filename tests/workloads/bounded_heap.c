/* A service whose cache grows until its own allocation limit refuses more, and which then stops itself, as a
 * runtime with a heap maximum does (the JVM's -Xmx with -XX:+ExitOnOutOfMemoryError exits with status 3). The
 * limit is an address-space limit (RLIMIT_AS) set at start, far below the memcg's: the OOM killer never comes.
 * bounded_heap [MiB/s = 16] [limit MiB = 96] */
#include <stdio.h>
#include <string.h>

#include "common.h"

#define RECORD (256 * 1024)

struct record {
    struct record *next;
    char body[RECORD - sizeof(struct record *)];
};

static struct record *cache;
static size_t cached;

static int cache_response(size_t id) {
    struct record *r = malloc(sizeof *r);
    if (!r)
        return 0;
    memset(r->body, (int)id, sizeof r->body);
    r->next = cache;
    cache = r;
    cached++;
    return 1;
}

int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 16), limit_mib = arg_or(argc, argv, 2, 96);
    struct rlimit as = {.rlim_cur = (rlim_t)(limit_mib * (1 << 20)), .rlim_max = RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &as) != 0) {
        perror("setrlimit");
        return 2;
    }
    serve_requests(mib_per_sec * (1 << 20) / RECORD, INFINITY, cache_response);
    fprintf(stderr, "bounded_heap: out of memory after caching %zu MiB\n", cached * RECORD >> 20);
    return 3;
}
