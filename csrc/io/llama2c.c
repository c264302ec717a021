#include "llama2c.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../core/alloc.h"

/* Same ceilings as the model's config validation, so a header the model would refuse is refused
 * here before anything is allocated; they also keep every size product far below 2^63. */
#define MAX_DIM (1 << 16)
#define MAX_HIDDEN (1 << 18)
#define MAX_LAYERS 1024
#define MAX_HEADS 1024
#define MAX_VOCAB (1 << 22)
#define MAX_SEQ (1 << 24)
#define MAX_TOKEN_LEN (1 << 16)
#define MAX_VOCAB_FILE ((int64_t)1 << 31)

/* Opens path for reading and reports its size; a missing file is MG_ERR_NOT_FOUND. */
static FILE *open_sized(const char *path, const char *what, int64_t *size, mg_error *err) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        mg_fail(err, errno == ENOENT ? MG_ERR_NOT_FOUND : MG_ERR_IO, "cannot open %s '%s': %s",
                what, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        mg_fail(err, MG_ERR_IO, "%s '%s' is not a regular file", what, path);
        fclose(f);
        return NULL;
    }
    *size = (int64_t)st.st_size;
    return f;
}

static int read_exact(FILE *f, void *dst, size_t n, const char *path, mg_error *err) {
    if (n > 0 && fread(dst, 1, n, f) != n)
        return mg_fail(err, ferror(f) ? MG_ERR_IO : MG_ERR_FORMAT,
                       "llama2.c checkpoint '%s': read failed or file shrank while reading", path);
    return MG_OK;
}

static int validate_header(const int32_t h[7], const char *path, mg_llama2c_header *out,
                           mg_error *err) {
    const struct {
        const char *name;
        int32_t value;
        int32_t max;
    } fields[] = {
        {"dim", h[0], MAX_DIM},
        {"hidden_dim", h[1], MAX_HIDDEN},
        {"n_layers", h[2], MAX_LAYERS},
        {"n_heads", h[3], MAX_HEADS},
        {"n_kv_heads", h[4], MAX_HEADS},
        /* negative means untied; INT32_MIN cannot be negated and maps to 0, i.e. rejected */
        {"|vocab_size|", h[5] == INT32_MIN ? 0 : (h[5] < 0 ? -h[5] : h[5]), MAX_VOCAB},
        {"seq_len", h[6], MAX_SEQ},
    };
    for (unsigned i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (fields[i].value <= 0 || fields[i].value > fields[i].max)
            return mg_fail(err, MG_ERR_FORMAT,
                           "llama2.c checkpoint '%s': header %s=%d is out of range (1..%d); "
                           "not a llama2.c (version 0) checkpoint?",
                           path, fields[i].name, (int)h[i], (int)fields[i].max);
    out->dim = h[0];
    out->hidden_dim = h[1];
    out->n_layers = h[2];
    out->n_heads = h[3];
    out->n_kv_heads = h[4];
    out->shared_classifier = h[5] > 0;
    out->vocab_size = h[5] > 0 ? h[5] : -h[5];
    out->seq_len = h[6];
    if (out->dim % out->n_heads != 0)
        return mg_fail(err, MG_ERR_FORMAT,
                       "llama2.c checkpoint '%s': dim=%d is not a multiple "
                       "of n_heads=%d",
                       path, out->dim, out->n_heads);
    if (out->n_kv_heads > out->n_heads || out->n_heads % out->n_kv_heads != 0)
        return mg_fail(err, MG_ERR_FORMAT,
                       "llama2.c checkpoint '%s': n_heads=%d is not a "
                       "multiple of n_kv_heads=%d",
                       path, out->n_heads, out->n_kv_heads);
    if ((out->dim / out->n_heads) % 2 != 0)
        return mg_fail(err, MG_ERR_FORMAT,
                       "llama2.c checkpoint '%s': head size %d is odd, "
                       "which rotary embeddings cannot pair",
                       path, out->dim / out->n_heads);
    return MG_OK;
}

/* One weight group of the file, in llama2.c's order; per_layer groups hold n_layers tensors. */
typedef struct {
    const char *name; /* printf pattern taking the layer index, or a plain name */
    int per_layer;
    int64_t rows, cols; /* cols == 0: a vector */
    int rope_heads;     /* > 0: rows are rope_heads heads whose RoPE pairs need reordering */
} group;

enum { GROUPS_BEFORE_FREQ = 11, MAX_GROUPS = 12 };

static int plan_groups(const mg_llama2c_header *h, group *g) {
    const int64_t D = h->dim, F = h->hidden_dim, V = h->vocab_size;
    const int64_t KD = (int64_t)h->n_kv_heads * (h->dim / h->n_heads);
    int n = 0;
    g[n++] = (group){"tok_embeddings", 0, V, D, 0};
    g[n++] = (group){"layers.%d.attn_norm.weight", 1, D, 0, 0};
    g[n++] = (group){"layers.%d.wq.weight", 1, D, D, h->n_heads};
    g[n++] = (group){"layers.%d.wk.weight", 1, KD, D, h->n_kv_heads};
    g[n++] = (group){"layers.%d.wv.weight", 1, KD, D, 0};
    g[n++] = (group){"layers.%d.wo.weight", 1, D, D, 0};
    g[n++] = (group){"layers.%d.mlp_norm.weight", 1, D, 0, 0};
    g[n++] = (group){"layers.%d.w_gate.weight", 1, F, D, 0}; /* llama2.c w1 */
    g[n++] = (group){"layers.%d.w_down.weight", 1, D, F, 0}; /* llama2.c w2 */
    g[n++] = (group){"layers.%d.w_up.weight", 1, F, D, 0};   /* llama2.c w3 */
    g[n++] = (group){"final_norm.weight", 0, D, 0, 0};
    /* freq_cis_real and freq_cis_imag sit here; the model computes its own rotary tables */
    if (!h->shared_classifier) g[n++] = (group){"lm_head.weight", 0, V, D, 0};
    return n;
}

static int64_t group_numel(const group *g) {
    return g->rows * (g->cols ? g->cols : 1);
}

/* llama2.c rotates adjacent pairs (x[2k], x[2k+1]); magnet rotates (x[k], x[k + hd/2]) with the
 * same frequency k. Moving row 2k to k and row 2k+1 to k + hd/2 within each head makes the two
 * compute the same attention scores (q and k get the same permutation, so q.k is unchanged). */
static void rope_rows_to_half(float *w, int heads, int64_t hd, int64_t cols, float *scratch) {
    const int64_t half = hd / 2;
    const size_t row_bytes = (size_t)cols * sizeof(float);
    for (int h = 0; h < heads; h++) {
        float *head = w + (int64_t)h * hd * cols;
        memcpy(scratch, head, (size_t)hd * row_bytes);
        for (int64_t k = 0; k < half; k++) {
            memcpy(head + k * cols, scratch + (2 * k) * cols, row_bytes);
            memcpy(head + (half + k) * cols, scratch + (2 * k + 1) * cols, row_bytes);
        }
    }
}

void mg_llama2c_free(mg_llama2c_checkpoint *ckpt) {
    if (ckpt == NULL) return;
    for (int i = 0; i < ckpt->n_tensors; i++)
        mg_free(ckpt->tensors[i].tensor.data);
    mg_free(ckpt->tensors);
    ckpt->tensors = NULL;
    ckpt->n_tensors = 0;
}

int mg_llama2c_read(const char *path, mg_llama2c_checkpoint *out, mg_error *err) {
    memset(out, 0, sizeof(*out));
    int64_t file_size;
    FILE *f = open_sized(path, "llama2.c checkpoint", &file_size, err);
    if (f == NULL) return err->code;
    float *scratch = NULL;
    int32_t raw[7];
    if (file_size < (int64_t)sizeof(raw)) {
        mg_fail(err, MG_ERR_FORMAT,
                "llama2.c checkpoint '%s' is %lld bytes, shorter than its "
                "28-byte header",
                path, (long long)file_size);
        goto fail;
    }
    if (read_exact(f, raw, sizeof(raw), path, err) != MG_OK) goto fail;
    mg_llama2c_header *h = &out->header;
    if (validate_header(raw, path, h, err) != MG_OK) goto fail;

    group groups[MAX_GROUPS];
    const int n_groups = plan_groups(h, groups);
    const int64_t hd = h->dim / h->n_heads;
    /* The header bounds keep each term below 2^42 floats, so int64 sums cannot overflow. */
    int64_t floats = (int64_t)h->seq_len * hd; /* freq_cis_real + freq_cis_imag */
    int count = 0;
    for (int g = 0; g < n_groups; g++) {
        const int64_t copies = groups[g].per_layer ? h->n_layers : 1;
        floats += copies * group_numel(&groups[g]);
        count += (int)copies;
    }
    const int64_t expected = (int64_t)sizeof(raw) + floats * (int64_t)sizeof(float);
    if (file_size != expected) {
        mg_fail(err, MG_ERR_FORMAT,
                "llama2.c checkpoint '%s' is %lld bytes but its header (dim=%d hidden_dim=%d "
                "n_layers=%d n_heads=%d n_kv_heads=%d vocab_size=%d%s seq_len=%d) implies %lld; "
                "truncated, or not a version-0 llama2.c checkpoint",
                path, (long long)file_size, h->dim, h->hidden_dim, h->n_layers, h->n_heads,
                h->n_kv_heads, h->vocab_size, h->shared_classifier ? "" : " untied", h->seq_len,
                (long long)expected);
        goto fail;
    }

    out->tensors = mg_alloc((size_t)count, sizeof(mg_llama2c_tensor), "llama2.c tensor list", err);
    scratch = mg_alloc((size_t)hd * (size_t)h->dim, sizeof(float), "RoPE reorder buffer", err);
    if (out->tensors == NULL || scratch == NULL) goto fail;
    for (int g = 0; g < n_groups; g++) {
        if (g == GROUPS_BEFORE_FREQ) {
            const int64_t skip = (int64_t)h->seq_len * hd * (int64_t)sizeof(float);
            if (fseeko(f, (off_t)skip, SEEK_CUR) != 0) {
                mg_fail(err, MG_ERR_IO, "llama2.c checkpoint '%s': seek failed", path);
                goto fail;
            }
        }
        const group *gr = &groups[g];
        const int copies = gr->per_layer ? h->n_layers : 1;
        for (int l = 0; l < copies; l++) {
            mg_llama2c_tensor *t = &out->tensors[out->n_tensors];
            const size_t numel = (size_t)group_numel(gr);
            t->tensor.data = mg_alloc(numel, sizeof(float), gr->name, err);
            if (t->tensor.data == NULL) goto fail;
            out->n_tensors++; /* counted now so mg_llama2c_free releases it on failure */
            snprintf(t->name, sizeof(t->name), gr->name, l);
            t->tensor.ndim = gr->cols ? 2 : 1;
            t->tensor.shape[0] = gr->rows;
            t->tensor.shape[1] = gr->cols;
            if (read_exact(f, t->tensor.data, numel * sizeof(float), path, err) != MG_OK) goto fail;
            if (gr->rope_heads > 0)
                rope_rows_to_half(t->tensor.data, gr->rope_heads, hd, gr->cols, scratch);
        }
    }
    mg_free(scratch);
    fclose(f);
    return MG_OK;
fail:
    mg_free(scratch);
    mg_llama2c_free(out);
    memset(out, 0, sizeof(*out));
    fclose(f);
    return err->code;
}

void mg_llama2c_vocab_free(mg_llama2c_vocab *vocab) {
    if (vocab == NULL) return;
    mg_free(vocab->scores);
    mg_free(vocab->offsets);
    mg_free(vocab->bytes);
    memset(vocab, 0, sizeof(*vocab));
}

/* Reads 4 bytes at *pos (checked against size) without assuming alignment. */
static int take4(const unsigned char *buf, int64_t size, int64_t *pos, void *dst) {
    if (size - *pos < 4) return -1;
    memcpy(dst, buf + *pos, 4);
    *pos += 4;
    return 0;
}

int mg_llama2c_read_vocab(const char *path, int vocab_size, mg_llama2c_vocab *out, mg_error *err) {
    memset(out, 0, sizeof(*out));
    if (vocab_size <= 0 || vocab_size > MAX_VOCAB)
        return mg_fail(err, MG_ERR_VALUE, "vocab_size=%d is out of range (1..%d)", vocab_size,
                       MAX_VOCAB);
    int64_t size;
    FILE *f = open_sized(path, "llama2.c tokenizer", &size, err);
    if (f == NULL) return err->code;
    unsigned char *buf = NULL;
    if (size > MAX_VOCAB_FILE) {
        mg_fail(err, MG_ERR_FORMAT, "llama2.c tokenizer '%s' is implausibly large (%lld bytes)",
                path, (long long)size);
        goto fail;
    }
    /* Pieces plus per-piece headers can never exceed the file, so the file bounds the blob. */
    buf = mg_alloc((size_t)size + 1, 1, "tokenizer file", err);
    out->bytes = mg_alloc((size_t)size + 1, 1, "tokenizer pieces", err);
    out->scores = mg_alloc((size_t)vocab_size, sizeof(float), "tokenizer scores", err);
    out->offsets = mg_alloc((size_t)vocab_size + 1, sizeof(size_t), "tokenizer offsets", err);
    if (!buf || !out->bytes || !out->scores || !out->offsets) goto fail;
    if (size > 0 && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        mg_fail(err, MG_ERR_IO, "llama2.c tokenizer '%s': read failed", path);
        goto fail;
    }
    int64_t pos = 0;
    int32_t max_len;
    if (take4(buf, size, &pos, &max_len) != 0 || max_len <= 0 || max_len > MAX_TOKEN_LEN) {
        mg_fail(err, MG_ERR_FORMAT,
                "llama2.c tokenizer '%s': missing or absurd "
                "max_token_length",
                path);
        goto fail;
    }
    out->max_token_length = max_len;
    size_t used = 0;
    for (int i = 0; i < vocab_size; i++) {
        int32_t len;
        if (take4(buf, size, &pos, &out->scores[i]) != 0 || take4(buf, size, &pos, &len) != 0) {
            mg_fail(err, MG_ERR_FORMAT,
                    "llama2.c tokenizer '%s' ends at token %d of %d "
                    "(truncated, or vocab_size does not match)",
                    path, i, vocab_size);
            goto fail;
        }
        if (len < 0 || len > max_len) {
            mg_fail(err, MG_ERR_FORMAT,
                    "llama2.c tokenizer '%s': token %d has length %d, "
                    "outside 0..max_token_length=%d",
                    path, i, (int)len, (int)max_len);
            goto fail;
        }
        if (size - pos < len) {
            mg_fail(err, MG_ERR_FORMAT,
                    "llama2.c tokenizer '%s': token %d (%d bytes) runs "
                    "past the end of the file",
                    path, i, (int)len);
            goto fail;
        }
        out->offsets[i] = used;
        memcpy(out->bytes + used, buf + pos, (size_t)len);
        used += (size_t)len;
        pos += len;
    }
    out->offsets[vocab_size] = used;
    if (pos != size) {
        mg_fail(err, MG_ERR_FORMAT,
                "llama2.c tokenizer '%s' has %lld bytes after its %d "
                "tokens: vocab_size does not match this tokenizer",
                path, (long long)(size - pos), vocab_size);
        goto fail;
    }
    out->vocab_size = vocab_size;
    mg_free(buf);
    fclose(f);
    return MG_OK;
fail:
    mg_free(buf);
    mg_llama2c_vocab_free(out);
    fclose(f);
    return err->code;
}
