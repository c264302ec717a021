/* The CUDA entry points of a build without the CUDA backend: every request for a GPU is
 * answered with the reason, so Python raises a clear error instead of failing to import. */
#include <stdio.h>

#include "backend.h"

#define MG_NO_CUDA_REASON                                                                          \
    "magnet was built without CUDA (nvcc was not found at build time; reinstall with "             \
    "MAGNET_CUDA=1 and nvcc on PATH to require it)"

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
