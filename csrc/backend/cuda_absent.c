/* The CUDA entry points of backend.h in a build without the CUDA backend (setup.py compiles this
 * file only then; nvcc was not found, or MAGNET_CUDA=0). */
#include "backend.h"

#include <stdio.h>

#define MG_NO_CUDA_REASON                                                                          \
    "magnet was built without CUDA (nvcc not found at build time; set MAGNET_CUDA=1 to require "   \
    "it)"

int mg_cuda_device_count(char *why, size_t why_len) {
    if (why != NULL && why_len > 0) snprintf(why, why_len, "%s", MG_NO_CUDA_REASON);
    return 0;
}

mg_backend *mg_backend_cuda_create(int device, mg_precision precision, mg_error *err) {
    (void)device;
    (void)precision;
    mg_fail(err, MG_ERR_UNSUPPORTED, "%s", MG_NO_CUDA_REASON);
    return NULL;
}

void mg_backend_cuda_free(mg_backend *be) {
    (void)be;
}
