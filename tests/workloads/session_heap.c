/* A heap leak written as services are: every request remembers its session in a table that is never pruned. The
 * session record (256 KiB) is malloc'd by remember_session and its pages are first written by a separate leaf,
 * fill_record, so the page faults that charge the memcg happen one call below the function that leaks. Each request
 * also mallocs and frees transient buffers (the request and the response), which the allocator reuses: noise that
 * leaks nothing. Ordinary code built with -O2 -g and no frame pointers.
 * session_heap [MiB per second = 8] [seconds = 8] [hold seconds = 60] */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define RECORD (256 * 1024)
#define MAX_SESSIONS (1 << 16)

struct session {
    uint64_t id;
    size_t words;
    uint64_t data[];
};

/* Not static, so the compiler cannot prove the sessions unused and drop the writes. */
struct session *sessions[MAX_SESSIONS];
size_t nsessions;

/* Writes the whole record: a loop over every word (not a constant, so it stays a loop rather than a memset). */
__attribute__((noinline)) void fill_record(struct session *s, uint64_t id) {
    s->id = id;
    s->words = (RECORD - sizeof *s) / sizeof s->data[0];
    for (size_t i = 0; i < s->words; i++)
        s->data[i] = id * 0x9e3779b97f4a7c15u + i;
}

/* The leak: the session is kept forever. */
__attribute__((noinline)) int remember_session(uint64_t id) {
    if (nsessions >= MAX_SESSIONS)
        return 0;
    struct session *s = malloc(RECORD);
    if (!s)
        return 0;
    fill_record(s, id);
    sessions[nsessions++] = s;
    return 1;
}

/* One request: a transient request buffer and response, both freed; the session is remembered. */
__attribute__((noinline)) int handle_request(size_t id) {
    char *request = malloc(16 * 1024);
    char *response = malloc(4 * 1024);
    if (!request || !response) {
        free(request);
        free(response);
        return 0;
    }
    int len = snprintf(request, 16 * 1024, "GET /session/%zu\n", id);
    memset(request + len, ' ', 16 * 1024 - (size_t)len);
    int ok = remember_session(id);
    memcpy(response, request, 4 * 1024);
    free(response);
    free(request);
    return ok;
}


int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 8), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    serve_requests(mib_per_sec * (1 << 20) / RECORD, secs, handle_request);
    fprintf(stderr, "session_heap: %zu sessions, %zu MiB\n", nsessions, nsessions * RECORD >> 20);
    hold(hold_secs);
    return 0;
}
