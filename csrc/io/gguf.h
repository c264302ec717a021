/* GGUF (v2, v3) reader: the header, metadata and tensor infos are parsed and validated up front
 * (from a mapping of the file, then kept as a copy of their bytes), and tensors are read (pread)
 * and dequantized to float32 on request. */
#ifndef MG_IO_GGUF_H
#define MG_IO_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

/* Metadata value types (gguf_type in the GGUF spec). */
enum {
    MG_GGUF_UINT8 = 0,
    MG_GGUF_INT8 = 1,
    MG_GGUF_UINT16 = 2,
    MG_GGUF_INT16 = 3,
    MG_GGUF_UINT32 = 4,
    MG_GGUF_INT32 = 5,
    MG_GGUF_FLOAT32 = 6,
    MG_GGUF_BOOL = 7,
    MG_GGUF_STRING = 8,
    MG_GGUF_ARRAY = 9,
    MG_GGUF_UINT64 = 10,
    MG_GGUF_INT64 = 11,
    MG_GGUF_FLOAT64 = 12,
};

/* A length-delimited string inside the file's header, as kept in memory (not NUL-terminated). */
typedef struct {
    const char *ptr;
    uint64_t len;
} mg_gguf_str;

typedef struct mg_gguf_value {
    uint32_t type;
    union {
        uint64_t u64;    /* UINT8/16/32/64 */
        int64_t i64;     /* INT8/16/32/64 */
        double f64;      /* FLOAT32/64 */
        int boolean;     /* BOOL */
        mg_gguf_str str; /* STRING */
        struct {
            uint32_t elem_type;
            uint64_t count;
            /* Exactly one is set by elem_type: scalars stay in the file (little-endian,
             * packed) so a huge numeric array costs no memory; strings and nested arrays are
             * indexed because their elements have variable size. */
            const uint8_t *raw;
            mg_gguf_str *strs;
            struct mg_gguf_value *items;
        } arr;
    };
} mg_gguf_value;

typedef struct {
    mg_gguf_str key;
    mg_gguf_value value;
} mg_gguf_kv;

#define MG_GGUF_MAX_DIMS 4

typedef struct {
    mg_gguf_str name;
    uint32_t n_dims;
    int64_t ne[MG_GGUF_MAX_DIMS]; /* ggml order: ne[0] is the fastest-varying (row) dimension */
    uint32_t type;                /* ggml type id, see dequantize.h */
    int64_t numel;
    uint64_t offset; /* absolute byte offset in the file, validated */
    uint64_t nbytes; /* validated: offset + nbytes <= file size */
} mg_gguf_tensor;

typedef struct {
    const uint8_t *data; /* the file's first bytes, read (not mapped) past the tensor infos */
    size_t size;         /* the file's size when it was opened */
    int fd;              /* the tensor data is read from here (pread), -1 when closed */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset; /* start of the tensor data section */
    uint64_t n_kv;
    mg_gguf_kv *kv;
    uint64_t n_tensors;
    mg_gguf_tensor *tensors;
} mg_gguf_file;

/* Opens and parses path. On failure everything is released and f is zeroed (fd -1); a missing
 * file is MG_ERR_NOT_FOUND, a malformed one MG_ERR_FORMAT, a newer/older version
 * MG_ERR_UNSUPPORTED. */
mg_code mg_gguf_open(mg_gguf_file *f, const char *path, mg_error *err);
void mg_gguf_close(mg_gguf_file *f);

/* The value stored under key (NUL-terminated), or NULL. */
const mg_gguf_value *mg_gguf_find(const mg_gguf_file *f, const char *key);

/* Element i of a scalar array as the widest type of its kind. */
uint64_t mg_gguf_array_u64(const mg_gguf_value *arr, uint64_t i);
int64_t mg_gguf_array_i64(const mg_gguf_value *arr, uint64_t i);
double mg_gguf_array_f64(const mg_gguf_value *arr, uint64_t i);

/* Dequantizes tensor i into out (numel floats). */
mg_code mg_gguf_read_tensor(const mg_gguf_file *f, uint64_t i, float *out, mg_error *err);

#endif
