/* GGUF reader. Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count,
 * kv_count × (string key, u32 type, value), tensor_count × (string name, u32 n_dims,
 * u64 ne[n_dims], u32 ggml type, u64 offset), padding to general.alignment, tensor data.
 * The header is read with pread into a buffer that grows until the parse fits in it, never
 * mapped: a mapping kills the process with SIGBUS when another process truncates the file while
 * it is read, a short pread is an error. Every read goes through a bounds-checked cursor, so a
 * hostile file cannot read past the buffer. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/alloc.h"
#include "dequantize.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF is little-endian; this reader decodes it with plain loads"
#endif

#define GGUF_DEFAULT_ALIGNMENT 32
/* Bounds that no real file approaches; they turn hostile lengths into clear errors early. */
#define GGUF_MAX_KEY_LEN 4096
#define GGUF_MAX_NAME_LEN 1024
#define GGUF_MAX_ARRAY_DEPTH 8
#define GGUF_MAX_ALIGNMENT (1u << 24)

/* The first read of a header; a tokenizer's vocabulary makes a header of a few MiB. */
#define GGUF_FIRST_READ ((size_t)2 << 20)

typedef struct {
    const uint8_t *base; /* the first `size` bytes of the file */
    size_t size;
    size_t file_size;
    size_t pos;
    mg_error *err;
    size_t need; /* set when the parse ran past `size` but not past the file: read this many */
} cursor;

/* What is left of the file: bounds for lengths and counts, and "truncated" messages. */
static size_t remaining(const cursor *c) {
    return c->file_size - c->pos;
}

/* 0 when n more bytes are in the buffer. When they are in the file but not yet read, records
 * how much to read and fails; the caller reads more and parses again. */
static int in_buffer(cursor *c, size_t n) {
    if (n <= c->size - c->pos) return 0;
    c->need = c->pos + n;
    mg_fail(c->err, MG_ERR_FORMAT, "GGUF header runs past the %zu bytes read", c->size);
    return -1;
}

/* A file's name or key as printable ASCII for an error message: at most 80 bytes, anything
 * else escaped as \xNN, so a corrupt name cannot make the message invalid UTF-8. */
typedef struct {
    char s[4 * 80 + 4];
} shown_str;

static shown_str show(mg_gguf_str str) {
    shown_str out;
    size_t n = 0;
    for (uint64_t i = 0; i < str.len && i < 80; i++) {
        const unsigned char ch = (unsigned char)str.ptr[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            out.s[n++] = (char)ch;
        } else {
            snprintf(out.s + n, sizeof(out.s) - n, "\\x%02x", ch);
            n += 4;
        }
    }
    if (str.len > 80) out.s[n++] = '.', out.s[n++] = '.', out.s[n++] = '.';
    out.s[n] = '\0';
    return out;
}

static int take(cursor *c, void *dst, size_t n, const char *what) {
    if (n > remaining(c)) {
        mg_fail(c->err, MG_ERR_FORMAT,
                "GGUF file is truncated: %s at byte %zu needs %zu bytes, %zu remain", what, c->pos,
                n, remaining(c));
        return -1;
    }
    if (in_buffer(c, n) != 0) return -1;
    memcpy(dst, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int take_u32(cursor *c, uint32_t *v, const char *what) {
    return take(c, v, sizeof(*v), what);
}

static int take_u64(cursor *c, uint64_t *v, const char *what) {
    return take(c, v, sizeof(*v), what);
}

static int take_str(cursor *c, mg_gguf_str *s, uint64_t max_len, const char *what) {
    uint64_t len;
    if (take_u64(c, &len, what) != 0) return -1;
    if (len > max_len) {
        mg_fail(c->err, MG_ERR_FORMAT, "GGUF %s at byte %zu has absurd length %llu (limit %llu)",
                what, c->pos - 8, (unsigned long long)len, (unsigned long long)max_len);
        return -1;
    }
    if (len > remaining(c)) {
        mg_fail(c->err, MG_ERR_FORMAT,
                "GGUF file is truncated: %s at byte %zu has length %llu but %zu bytes remain", what,
                c->pos - 8, (unsigned long long)len, remaining(c));
        return -1;
    }
    if (in_buffer(c, (size_t)len) != 0) return -1;
    s->ptr = (const char *)(c->base + c->pos);
    s->len = len;
    c->pos += (size_t)len;
    return 0;
}

/* Bytes one element of a scalar type occupies; 0 for strings, arrays and unknown types. */
static size_t scalar_size(uint32_t type) {
    switch (type) {
    case MG_GGUF_UINT8:
    case MG_GGUF_INT8:
    case MG_GGUF_BOOL:
        return 1;
    case MG_GGUF_UINT16:
    case MG_GGUF_INT16:
        return 2;
    case MG_GGUF_UINT32:
    case MG_GGUF_INT32:
    case MG_GGUF_FLOAT32:
        return 4;
    case MG_GGUF_UINT64:
    case MG_GGUF_INT64:
    case MG_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static void value_free(mg_gguf_value *v) {
    if (v->type != MG_GGUF_ARRAY) return;
    if (v->arr.items) {
        for (uint64_t i = 0; i < v->arr.count; i++)
            value_free(&v->arr.items[i]);
        mg_free(v->arr.items);
    }
    mg_free(v->arr.strs);
    v->arr.items = NULL;
    v->arr.strs = NULL;
}

/* Decodes a scalar at p (size checked by the caller) into v. */
static void scalar_decode(uint32_t type, const uint8_t *p, mg_gguf_value *v) {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f32;
    v->type = type;
    switch (type) {
    case MG_GGUF_UINT8:
        memcpy(&u8, p, 1);
        v->u64 = u8;
        break;
    case MG_GGUF_INT8:
        memcpy(&u8, p, 1);
        v->i64 = (int8_t)u8;
        break;
    case MG_GGUF_BOOL:
        memcpy(&u8, p, 1);
        v->boolean = u8 != 0;
        break;
    case MG_GGUF_UINT16:
        memcpy(&u16, p, 2);
        v->u64 = u16;
        break;
    case MG_GGUF_INT16:
        memcpy(&u16, p, 2);
        v->i64 = (int16_t)u16;
        break;
    case MG_GGUF_UINT32:
        memcpy(&u32, p, 4);
        v->u64 = u32;
        break;
    case MG_GGUF_INT32:
        memcpy(&u32, p, 4);
        v->i64 = (int32_t)u32;
        break;
    case MG_GGUF_FLOAT32:
        memcpy(&f32, p, 4);
        v->f64 = f32;
        break;
    case MG_GGUF_UINT64:
        memcpy(&u64, p, 8);
        v->u64 = u64;
        break;
    case MG_GGUF_INT64:
        memcpy(&u64, p, 8);
        v->i64 = (int64_t)u64;
        break;
    case MG_GGUF_FLOAT64:
        memcpy(&v->f64, p, 8);
        break;
    default:
        break;
    }
}

static int parse_value(cursor *c, uint32_t type, mg_gguf_value *v, int depth);

static int parse_array(cursor *c, mg_gguf_value *v, int depth) {
    uint32_t elem_type;
    uint64_t count;
    v->type = MG_GGUF_ARRAY;
    if (take_u32(c, &elem_type, "array element type") || take_u64(c, &count, "array length"))
        return -1;
    v->arr.elem_type = elem_type;
    size_t min_elem = scalar_size(elem_type);
    if (elem_type == MG_GGUF_STRING)
        min_elem = 8; /* the u64 length */
    else if (elem_type == MG_GGUF_ARRAY)
        min_elem = 12; /* u32 type + u64 length */
    else if (min_elem == 0) {
        mg_fail(c->err, MG_ERR_FORMAT, "GGUF array at byte %zu has unknown element type %u",
                c->pos - 12, elem_type);
        return -1;
    }
    if (elem_type == MG_GGUF_ARRAY && depth + 1 >= GGUF_MAX_ARRAY_DEPTH) {
        mg_fail(c->err, MG_ERR_FORMAT, "GGUF arrays nested deeper than %d levels",
                GGUF_MAX_ARRAY_DEPTH);
        return -1;
    }
    /* Every element takes at least min_elem bytes, so the file size bounds the count. */
    if (count > remaining(c) / min_elem) {
        mg_fail(c->err, MG_ERR_FORMAT,
                "GGUF array at byte %zu claims %llu elements but only %zu bytes remain",
                c->pos - 12, (unsigned long long)count, remaining(c));
        return -1;
    }
    v->arr.count = count;
    if (elem_type == MG_GGUF_STRING) {
        v->arr.strs = mg_alloc((size_t)count, sizeof(mg_gguf_str), "GGUF string array", c->err);
        if (v->arr.strs == NULL) return -1;
        for (uint64_t i = 0; i < count; i++)
            if (take_str(c, &v->arr.strs[i], c->file_size, "array string") != 0) return -1;
    } else if (elem_type == MG_GGUF_ARRAY) {
        v->arr.items = mg_alloc((size_t)count, sizeof(mg_gguf_value), "GGUF nested array", c->err);
        if (v->arr.items == NULL) return -1;
        /* zeroed items are harmless to value_free if we stop part-way */
        for (uint64_t i = 0; i < count; i++)
            if (parse_value(c, MG_GGUF_ARRAY, &v->arr.items[i], depth + 1) != 0) return -1;
    } else {
        if (in_buffer(c, (size_t)count * min_elem) != 0) return -1;
        v->arr.raw = c->base + c->pos;
        c->pos += (size_t)count * min_elem; /* count * min_elem <= remaining, checked above */
    }
    return 0;
}

static int parse_value(cursor *c, uint32_t type, mg_gguf_value *v, int depth) {
    if (type == MG_GGUF_STRING) {
        v->type = type;
        return take_str(c, &v->str, c->file_size, "string value");
    }
    if (type == MG_GGUF_ARRAY) return parse_array(c, v, depth);
    size_t n = scalar_size(type);
    if (n == 0) {
        mg_fail(c->err, MG_ERR_FORMAT, "GGUF value at byte %zu has unknown type %u", c->pos, type);
        return -1;
    }
    uint8_t buf[8];
    if (take(c, buf, n, "metadata value") != 0) return -1;
    scalar_decode(type, buf, v);
    return 0;
}

static int str_equals(mg_gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

const mg_gguf_value *mg_gguf_find(const mg_gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (str_equals(f->kv[i].key, key)) return &f->kv[i].value;
    return NULL;
}

static void array_elem(const mg_gguf_value *arr, uint64_t i, mg_gguf_value *out) {
    memset(out, 0, sizeof(*out));
    if (arr->type != MG_GGUF_ARRAY || arr->arr.raw == NULL || i >= arr->arr.count) return;
    size_t n = scalar_size(arr->arr.elem_type);
    scalar_decode(arr->arr.elem_type, arr->arr.raw + i * n, out);
}

uint64_t mg_gguf_array_u64(const mg_gguf_value *arr, uint64_t i) {
    mg_gguf_value v;
    array_elem(arr, i, &v);
    return v.type == MG_GGUF_BOOL ? (uint64_t)v.boolean : v.u64;
}

int64_t mg_gguf_array_i64(const mg_gguf_value *arr, uint64_t i) {
    mg_gguf_value v;
    array_elem(arr, i, &v);
    return v.type == MG_GGUF_BOOL ? v.boolean : v.i64;
}

double mg_gguf_array_f64(const mg_gguf_value *arr, uint64_t i) {
    mg_gguf_value v;
    array_elem(arr, i, &v);
    return v.f64;
}

void mg_gguf_close(mg_gguf_file *f) {
    if (f->kv) {
        for (uint64_t i = 0; i < f->n_kv; i++)
            value_free(&f->kv[i].value);
        mg_free(f->kv);
    }
    mg_free(f->tensors);
    mg_free((void *)f->data);
    if (f->fd >= 0) close(f->fd);
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}

static mg_code open_file(mg_gguf_file *f, const char *path, mg_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            return mg_fail(err, MG_ERR_NOT_FOUND, "GGUF file not found: %s", path);
        return mg_fail(err, MG_ERR_IO, "cannot open GGUF file %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mg_fail(err, MG_ERR_IO, "cannot stat GGUF file %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mg_fail(err, MG_ERR_IO, "%s is not a regular file", path);
    }
    if (st.st_size < 24) { /* magic + version + two counts */
        close(fd);
        return mg_fail(err, MG_ERR_FORMAT,
                       "%s is not a GGUF file: %lld bytes is shorter than the 24-byte header", path,
                       (long long)st.st_size);
    }
    f->size = (size_t)st.st_size;
    f->fd = fd;
    return MG_OK;
}

/* Makes f->data hold the file's first `want` bytes (want <= f->size), `have` of which it holds. */
static mg_code read_prefix(mg_gguf_file *f, size_t have, size_t want, const char *path,
                           mg_error *err) {
    uint8_t *buf = mg_alloc_uninit(want, 1, "GGUF header", err);
    if (buf == NULL) return err->code;
    if (have > 0) memcpy(buf, f->data, have);
    mg_free((void *)f->data);
    f->data = buf;
    while (have < want) {
        const ssize_t n = pread(f->fd, buf + have, want - have, (off_t)have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return mg_fail(err, MG_ERR_IO, "reading GGUF file %s failed: %s", path,
                           strerror(errno));
        if (n == 0)
            return mg_fail(err, MG_ERR_FORMAT,
                           "GGUF file %s ended at byte %zu of %zu (was it truncated or replaced "
                           "while it was read?)",
                           path, have, f->size);
        have += (size_t)n;
    }
    return MG_OK;
}

/* Frees what a parse made, keeping the file and the bytes read. */
static void free_parsed(mg_gguf_file *f) {
    if (f->kv) {
        for (uint64_t i = 0; i < f->n_kv; i++)
            value_free(&f->kv[i].value);
        mg_free(f->kv);
    }
    mg_free(f->tensors);
    f->kv = NULL;
    f->tensors = NULL;
    f->n_kv = f->n_tensors = 0;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
}

static mg_code parse_header(mg_gguf_file *f, cursor *c, const char *path, mg_error *err) {
    uint8_t magic[4];
    uint64_t n_tensors, n_kv;
    if (take(c, magic, 4, "magic") != 0) return err->code;
    if (memcmp(magic, "GGUF", 4) != 0)
        return mg_fail(err, MG_ERR_FORMAT,
                       "%s is not a GGUF file: bad magic %02x %02x %02x %02x (expected 'GGUF')",
                       path, magic[0], magic[1], magic[2], magic[3]);
    if (take_u32(c, &f->version, "version") != 0) return err->code;
    if (f->version != 2 && f->version != 3) {
        if (f->version >= (1u << 16))
            return mg_fail(err, MG_ERR_UNSUPPORTED,
                           "GGUF version 0x%08x looks byte-swapped: big-endian GGUF files are "
                           "not supported",
                           f->version);
        return mg_fail(err, MG_ERR_UNSUPPORTED, "GGUF version %u is not supported (only 2 and 3)",
                       f->version);
    }
    if (take_u64(c, &n_tensors, "tensor count") || take_u64(c, &n_kv, "metadata count"))
        return err->code;
    /* A metadata entry takes at least 13 bytes (key length, type, one-byte value) and a
     * tensor info at least 32 (name length, n_dims, one dimension, type, offset). */
    if (n_kv > remaining(c) / 13)
        return mg_fail(err, MG_ERR_FORMAT,
                       "GGUF metadata count %llu is absurd for a file of %zu bytes",
                       (unsigned long long)n_kv, f->size);
    if (n_tensors > remaining(c) / 32)
        return mg_fail(err, MG_ERR_FORMAT,
                       "GGUF tensor count %llu is absurd for a file of %zu bytes",
                       (unsigned long long)n_tensors, f->size);
    f->n_kv = n_kv;
    f->n_tensors = n_tensors;
    return MG_OK;
}

static mg_code parse_metadata(mg_gguf_file *f, cursor *c, mg_error *err) {
    f->kv = mg_alloc((size_t)f->n_kv, sizeof(mg_gguf_kv), "GGUF metadata", err);
    if (f->kv == NULL) return err->code;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        mg_gguf_kv *kv = &f->kv[i];
        uint32_t type;
        if (take_str(c, &kv->key, GGUF_MAX_KEY_LEN, "metadata key") != 0 ||
            take_u32(c, &type, "metadata type") != 0)
            return err->code;
        if (parse_value(c, type, &kv->value, 0) != 0) {
            /* name the key so the user knows which entry is broken */
            if (err->code == MG_ERR_FORMAT && strlen(err->msg) + 40 < sizeof(err->msg)) {
                size_t used = strlen(err->msg);
                snprintf(err->msg + used, sizeof(err->msg) - used, " (metadata key '%s')",
                         show(kv->key).s);
            }
            return err->code;
        }
    }
    const mg_gguf_value *al = mg_gguf_find(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (al != NULL) {
        if (al->type != MG_GGUF_UINT32)
            return mg_fail(err, MG_ERR_FORMAT, "GGUF general.alignment must be a uint32 (type %u)",
                           al->type);
        if (al->u64 == 0 || (al->u64 & (al->u64 - 1)) != 0 || al->u64 > GGUF_MAX_ALIGNMENT)
            return mg_fail(err, MG_ERR_FORMAT,
                           "GGUF general.alignment %llu is not a power of two up to %u",
                           (unsigned long long)al->u64, GGUF_MAX_ALIGNMENT);
        f->alignment = al->u64;
    }
    return MG_OK;
}

static mg_code parse_tensor_info(mg_gguf_file *f, cursor *c, uint64_t idx, mg_error *err) {
    mg_gguf_tensor *t = &f->tensors[idx];
    if (take_str(c, &t->name, GGUF_MAX_NAME_LEN, "tensor name") != 0 ||
        take_u32(c, &t->n_dims, "tensor dimension count") != 0)
        return err->code;
    const shown_str nm = show(t->name);
    if (t->n_dims < 1 || t->n_dims > MG_GGUF_MAX_DIMS)
        return mg_fail(err, MG_ERR_FORMAT, "GGUF tensor '%s' has %u dimensions (1 to %d allowed)",
                       nm.s, t->n_dims, MG_GGUF_MAX_DIMS);
    int64_t numel = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne;
        if (take_u64(c, &ne, "tensor dimension") != 0) return err->code;
        if (ne > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, (int64_t)ne, &numel))
            return mg_fail(err, MG_ERR_FORMAT, "GGUF tensor '%s' has an absurd shape", nm.s);
        t->ne[d] = (int64_t)ne;
    }
    for (uint32_t d = t->n_dims; d < MG_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    t->numel = numel;
    uint64_t rel;
    if (take_u32(c, &t->type, "tensor type") != 0 || take_u64(c, &rel, "tensor offset") != 0)
        return err->code;
    int64_t be;
    size_t bb;
    if (mg_ggml_block_geometry(t->type, &be, &bb) != 0)
        return mg_fail(err, MG_ERR_FORMAT, "GGUF tensor '%s' has unknown ggml type %u", nm.s,
                       t->type);
    if (t->ne[0] % be != 0)
        return mg_fail(err, MG_ERR_FORMAT,
                       "GGUF tensor '%s': row length %lld is not a multiple of the %s block "
                       "size %lld",
                       nm.s, (long long)t->ne[0], mg_ggml_type_name(t->type), (long long)be);
    uint64_t nbytes;
    if (__builtin_mul_overflow((uint64_t)(numel / be), (uint64_t)bb, &nbytes))
        return mg_fail(err, MG_ERR_FORMAT, "GGUF tensor '%s' is absurdly large", nm.s);
    t->nbytes = nbytes;
    if (rel % f->alignment != 0)
        return mg_fail(err, MG_ERR_FORMAT,
                       "GGUF tensor '%s' offset %llu is not a multiple of the alignment %llu", nm.s,
                       (unsigned long long)rel, (unsigned long long)f->alignment);
    t->offset = rel; /* made absolute once the data section start is known */
    return MG_OK;
}

static int cmp_tensor_names(const void *a, const void *b) {
    const mg_gguf_tensor *x = *(const mg_gguf_tensor *const *)a;
    const mg_gguf_tensor *y = *(const mg_gguf_tensor *const *)b;
    const size_t n = x->name.len < y->name.len ? (size_t)x->name.len : (size_t)y->name.len;
    const int c = n ? memcmp(x->name.ptr, y->name.ptr, n) : 0;
    if (c != 0) return c;
    return (x->name.len > y->name.len) - (x->name.len < y->name.len);
}

static int cmp_tensor_offsets(const void *a, const void *b) {
    const mg_gguf_tensor *x = *(const mg_gguf_tensor *const *)a;
    const mg_gguf_tensor *y = *(const mg_gguf_tensor *const *)b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* Duplicate names would be ambiguous; overlapping data would let a small file claim many
 * dequantized copies of the same bytes (tens of bytes of tensor info each), so the memory a
 * file can make the reader allocate stays bounded by a multiple of its size. */
static mg_code check_tensors_unique(mg_gguf_file *f, mg_error *err) {
    if (f->n_tensors < 2) return MG_OK;
    mg_gguf_tensor **order =
        mg_alloc((size_t)f->n_tensors, sizeof(mg_gguf_tensor *), "GGUF tensor index", err);
    if (order == NULL) return err->code;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof(*order), cmp_tensor_names);
    for (uint64_t i = 1; i < f->n_tensors; i++)
        if (cmp_tensor_names(&order[i - 1], &order[i]) == 0) {
            mg_fail(err, MG_ERR_FORMAT, "GGUF file names tensor '%s' twice",
                    show(order[i]->name).s);
            goto done;
        }
    qsort(order, (size_t)f->n_tensors, sizeof(*order), cmp_tensor_offsets);
    uint64_t end = 0; /* the furthest end of the data so far, and whose it is */
    const mg_gguf_tensor *owner = NULL;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const mg_gguf_tensor *t = order[i];
        if (t->nbytes == 0) continue;
        if (owner != NULL && t->offset < end) {
            mg_fail(err, MG_ERR_FORMAT,
                    "GGUF tensors '%s' and '%s' share data bytes: the file is corrupt",
                    show(owner->name).s, show(t->name).s);
            goto done;
        }
        end = t->offset + t->nbytes; /* no overflow: validated against the file size */
        owner = t;
    }
done:
    mg_free(order);
    return err->code;
}

static mg_code parse_tensors(mg_gguf_file *f, cursor *c, mg_error *err) {
    f->tensors = mg_alloc((size_t)f->n_tensors, sizeof(mg_gguf_tensor), "GGUF tensor infos", err);
    if (f->tensors == NULL) return err->code;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (parse_tensor_info(f, c, i, err) != MG_OK) return err->code;
    uint64_t start = ((uint64_t)c->pos + f->alignment - 1) / f->alignment * f->alignment;
    f->data_offset = start;
    if (f->n_tensors == 0) return MG_OK;
    if (start > f->size)
        return mg_fail(err, MG_ERR_FORMAT,
                       "GGUF file is truncated: tensor data should start at byte %llu but the "
                       "file has %zu bytes",
                       (unsigned long long)start, f->size);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        mg_gguf_tensor *t = &f->tensors[i];
        const shown_str nm = show(t->name);
        uint64_t begin, end;
        if (__builtin_add_overflow(start, t->offset, &begin) ||
            __builtin_add_overflow(begin, t->nbytes, &end) || end > f->size)
            return mg_fail(err, MG_ERR_FORMAT,
                           "GGUF tensor '%s' data (offset %llu, %llu bytes) runs past the end "
                           "of the file (%zu bytes): the file is truncated or corrupt",
                           nm.s, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                           f->size);
        t->offset = begin;
    }
    return check_tensors_unique(f, err);
}

mg_code mg_gguf_open(mg_gguf_file *f, const char *path, mg_error *err) {
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    if (open_file(f, path, err) != MG_OK) return err->code;
    size_t have = 0, want = f->size < GGUF_FIRST_READ ? f->size : GGUF_FIRST_READ;
    for (;;) {
        if (read_prefix(f, have, want, path, err) != MG_OK) break;
        have = want;
        cursor c = {f->data, have, f->size, 0, err, 0};
        if (parse_header(f, &c, path, err) == MG_OK && parse_metadata(f, &c, err) == MG_OK &&
            parse_tensors(f, &c, err) == MG_OK)
            return MG_OK;
        if (c.need == 0) break; /* a real error */
        /* the header is longer than what was read: read at least twice as much, parse again */
        free_parsed(f);
        mg_error_clear(err);
        want = c.need > 2 * have ? c.need : 2 * have;
        if (want > f->size) want = f->size;
    }
    mg_gguf_close(f);
    return err->code;
}

mg_code mg_gguf_read_tensor(const mg_gguf_file *f, uint64_t i, float *out, mg_error *err) {
    if (i >= f->n_tensors)
        return mg_fail(err, MG_ERR_VALUE, "GGUF tensor index %llu out of range",
                       (unsigned long long)i);
    const mg_gguf_tensor *t = &f->tensors[i];
    uint8_t *raw = mg_alloc_uninit(t->nbytes ? t->nbytes : 1, 1, "GGUF tensor data", err);
    if (raw == NULL) return err->code;
    for (uint64_t got = 0; got < t->nbytes;) {
        const ssize_t n = pread(f->fd, raw + got, t->nbytes - got, (off_t)(t->offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const int e = errno;
            mg_free(raw);
            if (n < 0)
                return mg_fail(err, MG_ERR_IO, "reading GGUF tensor '%s' failed: %s",
                               show(t->name).s, strerror(e));
            return mg_fail(err, MG_ERR_FORMAT,
                           "GGUF tensor '%s': the file ended early (was it truncated or replaced "
                           "while it was read?)",
                           show(t->name).s);
        }
        got += (uint64_t)n;
    }
    const mg_code rc = mg_dequantize(t->type, raw, out, t->numel, err);
    mg_free(raw);
    if (rc != MG_OK) {
        /* name the tensor: the type alone does not tell the user where to look */
        size_t used = strlen(err->msg);
        if (used + 40 < sizeof(err->msg)) {
            snprintf(err->msg + used, sizeof(err->msg) - used, " (tensor '%s')", show(t->name).s);
        }
        return err->code;
    }
    return MG_OK;
}
