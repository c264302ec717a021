#include "alloc.h"

#include <stdlib.h>
#include <string.h>

void *mg_alloc_uninit(size_t count, size_t elem_size, const char *what, mg_error *err) {
    size_t bytes;
    if (mg_mul_size(count, elem_size, &bytes) != 0 || bytes > MG_MAX_ALLOC) {
        mg_fail(err, MG_ERR_NOMEM, "cannot allocate %s: %zu x %zu bytes is too large", what, count,
                elem_size);
        return NULL;
    }
    if (bytes == 0) bytes = 64;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
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
