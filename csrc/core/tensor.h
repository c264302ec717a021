/* A named float32 tensor: what every file reader produces and the model consumes. */
#ifndef MG_CORE_TENSOR_H
#define MG_CORE_TENSOR_H

#include <stdint.h>

#define MG_MAX_DIMS 4

typedef struct {
    int ndim;
    int64_t shape[MG_MAX_DIMS];
    float *data; /* owned by whoever created the tensor */
} mg_tensor;

static inline int64_t mg_tensor_numel(const mg_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

#endif
