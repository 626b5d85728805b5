/* Busy on the heap but not leaking: every request parses into a handful of small strings, builds a response in a
 * buffer that realloc grows, and frees all of it before the next. Held afterwards, alive, with nothing kept.
 * request_churn [requests per second = 2000] [seconds = 8] [hold seconds = 60] */
#include <stdio.h>
#include <string.h>

#include "common.h"

volatile size_t answered;

__attribute__((noinline)) char *render(size_t id, char **fields, int n) {
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    for (int i = 0; out && i < n; i++) {
        size_t need = len + strlen(fields[i]) + 2;
        if (need > cap) {
            char *grown = realloc(out, cap = need * 2);
            if (!grown) {
                free(out);
                return NULL;
            }
            out = grown;
        }
        len += (size_t)sprintf(out + len, "%s,", fields[i]);
    }
    (void)id;
    return out;
}

__attribute__((noinline)) int handle_request(size_t id) {
    char *fields[16];
    for (int i = 0; i < 16; i++) {
        fields[i] = malloc(32 + (size_t)(i * 37 % 200));
        if (!fields[i])
            return 0;
        snprintf(fields[i], 32, "f%d-%zu", i, id);
    }
    char *response = render(id, fields, 16);
    if (response)
        answered += strlen(response);
    free(response);
    for (int i = 0; i < 16; i++)
        free(fields[i]);
    return 1;
}

int main(int argc, char **argv) {
    double per_sec = arg_or(argc, argv, 1, 2000), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    serve_requests(per_sec, secs, handle_request);
    fprintf(stderr, "request_churn: %zu requests, nothing kept\n", requests_served);
    hold(hold_secs);
    return 0;
}
