/* llama2.c checkpoints (the "legacy" version-0 export: 7 int32 header, then float32 weights) and
 * llama2.c tokenizer files. Every size is validated against the file before it is read. */
#ifndef MG_IO_LLAMA2C_H
#define MG_IO_LLAMA2C_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"

#define MG_LLAMA2C_NAME_MAX 64

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads;
    int vocab_size; /* always positive here; the sign in the file becomes shared_classifier */
    int seq_len;
    int shared_classifier; /* 1: the classifier is the token embedding; 0: wcls follows */
} mg_llama2c_header;

typedef struct {
    char name[MG_LLAMA2C_NAME_MAX];
    mg_tensor tensor; /* data from mg_alloc, one allocation per tensor (NULL once taken) */
} mg_llama2c_tensor;

/* Tensors come out in magnet's parameter names (csrc/model/params.c) and layout: wq and wk rows
 * are permuted per head from llama2.c's interleaved RoPE pairs to the rotate-half layout. */
typedef struct {
    mg_llama2c_header header;
    int n_tensors;
    mg_llama2c_tensor *tensors;
} mg_llama2c_checkpoint;

/* Reads the whole checkpoint. The file must be exactly as long as its header implies: a longer
 * file is not a version-0 checkpoint (or its header is wrong), so guessing would load garbage.
 * On failure *out is left empty (nothing to free) and err says why. */
int mg_llama2c_read(const char *path, mg_llama2c_checkpoint *out, mg_error *err);
void mg_llama2c_free(mg_llama2c_checkpoint *ckpt);

typedef struct {
    int vocab_size;
    int max_token_length;
    float *scores;   /* [vocab_size] */
    size_t *offsets; /* [vocab_size + 1]: piece i is bytes[offsets[i] .. offsets[i+1]) */
    char *bytes;     /* every piece, back to back (not NUL-terminated) */
} mg_llama2c_vocab;

/* Reads a tokenizer file holding exactly vocab_size pieces; trailing bytes are an error, since
 * they mean the vocabulary does not belong to a model of that size. */
int mg_llama2c_read_vocab(const char *path, int vocab_size, mg_llama2c_vocab *out, mg_error *err);
void mg_llama2c_vocab_free(mg_llama2c_vocab *vocab);

#endif
