/* Checked allocation: sizes are multiplied with overflow checks and every failure is reported. */
#ifndef MG_CORE_ALLOC_H
#define MG_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Largest single allocation we attempt (bytes); beyond it we report MemoryError up front. */
#define MG_MAX_ALLOC ((size_t)1 << 40)
/* Allocations of at least this many bytes are also checked against the memory the system can
 * still give (MemAvailable + SwapFree in /proc/meminfo, else the physical memory), so that a
 * request whose buffers cannot exist raises MemoryError before anything is allocated instead of
 * being granted by overcommit and killed by the OOM killer when touched. */
#define MG_CHECKED_ALLOC ((size_t)64 << 20)

/* Bytes the system can still provide (see MG_CHECKED_ALLOC); SIZE_MAX when unknown. */
size_t mg_memory_available(void);

/* Returns 0 and writes a*b to *out, or -1 on overflow. */
static inline int mg_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

/* 64-byte aligned, zeroed. NULL (with err set) on failure or overflow. */
void *mg_alloc(size_t count, size_t elem_size, const char *what, mg_error *err);
/* As mg_alloc, without zeroing: for buffers that are fully written before being read. */
void *mg_alloc_uninit(size_t count, size_t elem_size, const char *what, mg_error *err);
void mg_free(void *p);

#ifdef MG_FAULT_INJECTION
/* Debug builds only (MAGNET_DEBUG=1, which tests/sanitize.sh uses): the n-th mg_alloc from now
 * fails as if out of memory (n <= 0: none), so that tests can reach every failure path.
 * Returns how many allocations the previous setting counted. */
long mg_fail_allocation_after(long n);
#endif

#endif
