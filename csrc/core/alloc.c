#include "alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

size_t mg_memory_available(void) {
    unsigned long long avail = 0, swap = 0;
    int found = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[128];
        unsigned long long kb;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = kb * 1024ull;
                found = 1;
            } else if (sscanf(line, "SwapFree: %llu kB", &kb) == 1) {
                swap = kb * 1024ull;
            }
        }
        fclose(f);
    }
    if (!found) {
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        if (pages <= 0 || page <= 0) return SIZE_MAX;
        avail = (unsigned long long)pages * (unsigned long long)page;
    }
    avail += swap;
    return avail > (unsigned long long)SIZE_MAX ? SIZE_MAX : (size_t)avail;
}

#ifdef MG_FAULT_INJECTION
static long g_fail_at = 0;   /* the allocation that fails, counted from the last setting */
static long g_allocated = 0; /* allocations since the last setting */

long mg_fail_allocation_after(long n) {
    const long counted = __atomic_exchange_n(&g_allocated, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_fail_at, n, __ATOMIC_SEQ_CST);
    return counted;
}

static int injected_failure(void) {
    const long k = __atomic_add_fetch(&g_allocated, 1, __ATOMIC_SEQ_CST);
    return k == __atomic_load_n(&g_fail_at, __ATOMIC_SEQ_CST);
}
#else
static int injected_failure(void) {
    return 0;
}
#endif

void *mg_alloc_uninit(size_t count, size_t elem_size, const char *what, mg_error *err) {
    size_t bytes;
    if (mg_mul_size(count, elem_size, &bytes) != 0 || bytes > MG_MAX_ALLOC) {
        mg_fail(err, MG_ERR_NOMEM, "cannot allocate %s: %zu x %zu bytes is too large", what, count,
                elem_size);
        return NULL;
    }
    if (bytes >= MG_CHECKED_ALLOC) {
        size_t avail = mg_memory_available();
        if (bytes > avail) {
            mg_fail(err, MG_ERR_NOMEM,
                    "cannot allocate %s: %zu bytes needed, only %zu bytes of memory available",
                    what, bytes, avail);
            return NULL;
        }
    }
    if (bytes == 0) bytes = 64;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = injected_failure() ? NULL : aligned_alloc(64, rounded);
    if (p == NULL) {
        mg_fail(err, MG_ERR_NOMEM, "out of memory allocating %s (%zu bytes)", what, bytes);
        return NULL;
    }
    return p;
}

void *mg_alloc(size_t count, size_t elem_size, const char *what, mg_error *err) {
    void *p = mg_alloc_uninit(count, elem_size, what, err);
    if (p != NULL) memset(p, 0, ((count * elem_size) + 63) & ~(size_t)63);
    return p;
}

void mg_free(void *p) {
    free(p);
}
