/* libsessioncache: a session cache in a shared library (tests/workloads/libsessioncache.c), used by session_cache. */
#ifndef LEAKTRACE_WORKLOAD_SESSIONCACHE_H
#define LEAKTRACE_WORKLOAD_SESSIONCACHE_H

#include <stddef.h>

/* Stores a copy of `len` bytes of `value` under `key`, filled out to `bytes`; 0 when out of memory. */
int cache_store(unsigned long key, const void *value, size_t len, size_t bytes);
/* Entries stored so far. */
size_t cache_entries(void);

#endif
