/* Helpers of the frame-pointer variants (heap_leak, oom_leak, churn, working_set, pipe_leak): built with
 * -fno-omit-frame-pointer (tests/src/lib.rs FRAME_POINTER_WORKLOADS) and written so that the leaking function is
 * always the leaf of the stack, where a frame-pointer walk cannot lose it. Real programs are not written like this:
 * the ordinary workloads (session_heap, upstream_pipes, session_cache, session_store, retain_blocks) call through
 * libc and are built with -O2 -g and no frame pointers. */
#ifndef LEAKTRACE_WORKLOAD_FRAME_POINTERS_H
#define LEAKTRACE_WORKLOAD_FRAME_POINTERS_H

#include "common.h"

/* Mallocs `bytes` and writes every page. Always inlined: the page faults, and so the stacks leaktrace records, must
 * have the calling (named) function as their leaf. NULL when malloc fails. */
static inline __attribute__((always_inline)) volatile char *touched_block(size_t bytes) {
    volatile char *p = malloc(bytes);
    for (size_t i = 0; p && i < bytes; i += PAGE)
        p[i] = (char)(i / PAGE + 1);
    return p;
}

/* The syscall instruction sits in the calling function itself: libc's wrappers keep no frame pointer, and a user
 * stack walked from inside one would skip the function that called it. */
#if defined(__x86_64__)
static inline __attribute__((always_inline)) long sys4(long nr, long a, long b, long c, long d) {
    register long r10 __asm__("r10") = d;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return ret;
}
#else
#include <sys/syscall.h>
#define sys4(nr, a, b, c, d) syscall(nr, a, b, c, d)
#endif

#endif
