/* The allocator's reuse hides who holds the heap. Each request renders its response into a 512 KiB buffer that
 * it frees once sent, then remembers a 256 KiB session blob in a cache that never evicts. glibc hands the freed
 * render buffer to the session blob, and the next render extends the heap: every new page is first written by
 * render_response, while the bytes that stay are held by remember_session. Ordinary code, -O2 -g.
 * render_sessions [MiB of sessions per second = 8] [seconds = 8] [hold seconds = 60] */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define RENDER (512 * 1024)
#define BLOB (256 * 1024)
#define MAX_SESSIONS (1 << 16)

char *sessions[MAX_SESSIONS];
size_t nsessions;
volatile uint64_t sent;

/* Renders a whole response: every byte written (a loop over words, as a template engine fills its buffer). */
__attribute__((noinline)) char *render_response(size_t id) {
    uint64_t *page = malloc(RENDER);
    if (!page)
        return NULL;
    for (size_t i = 0; i < RENDER / sizeof *page; i++)
        page[i] = id * 0x9e3779b97f4a7c15u + i;
    return (char *)page;
}

__attribute__((noinline)) void send_response(const char *page) {
    uint64_t sum = 0;
    for (size_t i = 0; i < RENDER; i += 4096)
        sum += (unsigned char)page[i];
    sent += sum;
}

/* The leak: a copy of the response's head is kept for the session, forever. */
__attribute__((noinline)) int remember_session(const char *head) {
    if (nsessions >= MAX_SESSIONS)
        return 0;
    char *blob = malloc(BLOB);
    if (!blob)
        return 0;
    memcpy(blob, head, 64);
    sessions[nsessions++] = blob;
    return 1;
}

__attribute__((noinline)) int handle_request(size_t id) {
    char *page = render_response(id);
    if (!page)
        return 0;
    char head[64];
    memcpy(head, page, sizeof head);
    send_response(page);
    free(page);
    return remember_session(head);
}

int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 8), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    serve_requests(mib_per_sec * (1 << 20) / BLOB, secs, handle_request);
    fprintf(stderr, "render_sessions: %zu sessions, %zu MiB\n", nsessions, nsessions * BLOB >> 20);
    hold(hold_secs);
    return 0;
}
