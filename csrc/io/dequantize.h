/* ggml tensor types: their block geometry, and dequantization of the supported ones to float32. */
#ifndef MG_IO_DEQUANTIZE_H
#define MG_IO_DEQUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

/* ggml's type ids as stored in GGUF tensor infos (ggml.h enum ggml_type). */
enum {
    MG_GGML_F32 = 0,
    MG_GGML_F16 = 1,
    MG_GGML_Q4_0 = 2,
    MG_GGML_Q4_1 = 3,
    MG_GGML_Q5_0 = 6,
    MG_GGML_Q5_1 = 7,
    MG_GGML_Q8_0 = 8,
    MG_GGML_Q8_1 = 9,
    MG_GGML_Q2_K = 10,
    MG_GGML_Q3_K = 11,
    MG_GGML_Q4_K = 12,
    MG_GGML_Q5_K = 13,
    MG_GGML_Q6_K = 14,
    MG_GGML_Q8_K = 15,
    MG_GGML_BF16 = 30,
};

/* Name of a ggml type ("Q4_K"), or NULL for an id ggml does not define. */
const char *mg_ggml_type_name(uint32_t type);

/* Elements per block and bytes per block of a known type; 0 on success, -1 for an unknown id. */
int mg_ggml_block_geometry(uint32_t type, int64_t *block_elems, size_t *block_bytes);

/* 1 when mg_dequantize handles the type. */
int mg_ggml_type_supported(uint32_t type);

/* Converts n elements (n a multiple of the type's block size) at src to float32 at dst.
 * src must hold exactly the bytes mg_ggml_block_geometry implies; the caller validates that.
 * MG_ERR_UNSUPPORTED (naming the type) for a type without a dequantizer. */
mg_code mg_dequantize(uint32_t type, const void *src, float *dst, int64_t n, mg_error *err);

/* IEEE half and bfloat16 bit patterns to float (exact: every such value is a float). */
float mg_f16_to_f32(uint16_t h);
float mg_bf16_to_f32(uint16_t h);

#endif
