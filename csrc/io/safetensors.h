/* The .safetensors reader: an 8-byte little-endian header length, a JSON header naming each
 * tensor's dtype, shape and byte range, then the data section. F32, F16 and BF16 tensors are
 * read and converted to float32; every length, shape and offset is validated before use. */
#ifndef MG_IO_SAFETENSORS_H
#define MG_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"

/* The Rust reference implementation's limit; a larger header is treated as corrupt. */
#define MG_SAFETENSORS_MAX_HEADER ((uint64_t)100000000)

typedef enum {
    MG_ST_F32 = 0,
    MG_ST_F16,
    MG_ST_BF16,
} mg_st_dtype;

typedef struct {
    char *name; /* UTF-8, NUL-terminated; name_len is authoritative (JSON may encode NUL) */
    size_t name_len;
    mg_st_dtype dtype;   /* the dtype stored in the file; tensor.data is always float32 */
    int skipped;         /* named in the reader's skip list: not read, tensor.data NULL */
    uint64_t begin, end; /* byte range within the data section */
    mg_tensor tensor;    /* data owned by this entry until a caller takes it (and sets it NULL) */
} mg_st_entry;

typedef struct {
    mg_st_entry *entries; /* in header order */
    int count;
} mg_safetensors;

/* Names of tensors to leave unread (mg_safetensors_read): any dtype is accepted for them (old
 * GPT-2 files store their causal-mask buffers as U8 or BOOL), and only their byte range is
 * checked. */
typedef struct {
    const char *const *names;
    const size_t *lens;
    int count;
} mg_st_skip;

/* Reads every tensor of the file at path except those `skip` names (may be NULL). On failure
 * returns the error code with err set and out left empty (nothing to free); on success the
 * caller frees with mg_safetensors_free. */
mg_code mg_safetensors_read(const char *path, const mg_st_skip *skip, mg_safetensors *out,
                            mg_error *err);

/* Frees names and any tensor data not taken; safe on an empty or zeroed struct. */
void mg_safetensors_free(mg_safetensors *st);

#endif
