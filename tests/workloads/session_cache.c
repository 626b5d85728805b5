/* A heap leak inside a shared library: each request stores its session in libsessioncache.so's cache
 * (cache_store), which never evicts. Linked against the library in the build directory (rpath); -O2 -g, no frame
 * pointers. session_cache [MiB per second = 8] [seconds = 8] [hold seconds = 60] */
#include <stdio.h>

#include "common.h"
#include "sessioncache.h"

#define ENTRY (256 * 1024)

/* One request: the session's state is cached under its id. */
__attribute__((noinline)) int handle_request(size_t id) {
    char state[128];
    int len = snprintf(state, sizeof state, "session %zu: user=%zu cart=[]", id, id * 7 % 1000);
    return cache_store(id, state, (size_t)len, ENTRY - 64);
}


int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 8), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    serve_requests(mib_per_sec * (1 << 20) / ENTRY, secs, handle_request);
    fprintf(stderr, "session_cache: %zu entries cached\n", cache_entries());
    hold(hold_secs);
    return 0;
}
