/* libsessioncache.so: a cache that never evicts, so every entry stored leaks. Built with -O2 -g -fPIC and no frame
 * pointers, as distributions build shared libraries; the entry's pages are written here, inside the library. */
#include <stdlib.h>
#include <string.h>

#include "sessioncache.h"

struct entry {
    struct entry *next;
    unsigned long key;
    size_t bytes;
    unsigned char data[];
};

static struct entry *entries;
static size_t nentries;

int cache_store(unsigned long key, const void *value, size_t len, size_t bytes) {
    struct entry *e = malloc(sizeof *e + bytes);
    if (!e)
        return 0;
    e->key = key;
    e->bytes = bytes;
    if (len > bytes)
        len = bytes;
    memcpy(e->data, value, len);
    /* Padding derived from the key: a loop, not a memset, so the pages fault in here. */
    for (size_t i = len; i < bytes; i++)
        e->data[i] = (unsigned char)(key + i);
    e->next = entries;
    entries = e;
    nentries++;
    return 1;
}

size_t cache_entries(void) {
    return nentries;
}
