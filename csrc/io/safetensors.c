#include "safetensors.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "../core/alloc.h"

/* ---- a strict JSON parser for the header's subset: objects, strings, integer arrays ---- */

typedef struct {
    const char *s;
    size_t n, pos;
    mg_error *err;
} json_cursor;

static mg_code json_fail(json_cursor *c, const char *what) {
    if (c->pos >= c->n)
        return mg_fail(c->err, MG_ERR_FORMAT,
                       "safetensors header: %s, but the JSON header ends at byte %zu", what, c->n);
    unsigned char ch = (unsigned char)c->s[c->pos];
    if (ch >= 0x20 && ch < 0x7f)
        return mg_fail(c->err, MG_ERR_FORMAT,
                       "safetensors header: %s at byte %zu of the JSON header (found '%c')", what,
                       c->pos, ch);
    return mg_fail(c->err, MG_ERR_FORMAT,
                   "safetensors header: %s at byte %zu of the JSON header (found byte 0x%02x)",
                   what, c->pos, ch);
}

static void json_skip_ws(json_cursor *c) {
    while (c->pos < c->n) {
        char ch = c->s[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') break;
        c->pos++;
    }
}

/* The next non-space byte, or -1 at the end. */
static int json_peek(json_cursor *c) {
    json_skip_ws(c);
    return c->pos < c->n ? (unsigned char)c->s[c->pos] : -1;
}

static mg_code json_expect(json_cursor *c, char ch) {
    if (json_peek(c) != (unsigned char)ch) {
        char what[32];
        snprintf(what, sizeof(what), "expected '%c'", ch);
        return json_fail(c, what);
    }
    c->pos++;
    return MG_OK;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes available), or 0 if invalid:
 * overlong forms, surrogates and code points above U+10FFFF are rejected. */
static size_t utf8_sequence(const unsigned char *p, size_t n) {
    unsigned char b = p[0];
    if (b < 0x80) return 1;
    size_t len;
    uint32_t cp, min;
    if ((b & 0xe0) == 0xc0) {
        len = 2, cp = b & 0x1f, min = 0x80;
    } else if ((b & 0xf0) == 0xe0) {
        len = 3, cp = b & 0x0f, min = 0x800;
    } else if ((b & 0xf8) == 0xf0) {
        len = 4, cp = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Four hex digits at s[pos..pos+3], all before limit; -1 if not. */
static int32_t json_hex4(const char *s, size_t pos, size_t limit) {
    if (pos + 4 > limit) return -1;
    int32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = s[pos + (size_t)i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decodes a string into a new NUL-terminated buffer (mg_alloc), *out NULL on failure. */
static mg_code json_string(json_cursor *c, char **out, size_t *out_len) {
    *out = NULL;
    if (json_peek(c) != '"') return json_fail(c, "expected a string");
    size_t start = c->pos + 1, end = start;
    /* Find the closing quote first, so the buffer is sized by this string, not the header. */
    while (end < c->n && c->s[end] != '"')
        end += c->s[end] == '\\' ? 2 : 1;
    if (end >= c->n) return json_fail(c, "unterminated string");
    /* Escapes only shrink: \uXXXX (6 bytes) -> at most 3, a surrogate pair (12) -> 4. */
    char *buf = mg_alloc(end - start + 1, 1, "safetensors header string", c->err);
    if (buf == NULL) return c->err->code;
    size_t len = 0;
    c->pos = start;
    while (c->pos < end) {
        unsigned char ch = (unsigned char)c->s[c->pos];
        if (ch < 0x20) {
            json_fail(c, "control character in string");
            goto fail;
        }
        if (ch != '\\') {
            size_t k = utf8_sequence((const unsigned char *)c->s + c->pos, end - c->pos);
            if (k == 0) {
                json_fail(c, "invalid UTF-8 in string");
                goto fail;
            }
            memcpy(buf + len, c->s + c->pos, k);
            len += k;
            c->pos += k;
            continue;
        }
        char e = c->s[c->pos + 1]; /* the scan above guarantees c->pos + 1 < end */
        size_t escape_at = c->pos;
        c->pos += 2;
        switch (e) {
        case '"':
            buf[len++] = '"';
            break;
        case '\\':
            buf[len++] = '\\';
            break;
        case '/':
            buf[len++] = '/';
            break;
        case 'b':
            buf[len++] = '\b';
            break;
        case 'f':
            buf[len++] = '\f';
            break;
        case 'n':
            buf[len++] = '\n';
            break;
        case 'r':
            buf[len++] = '\r';
            break;
        case 't':
            buf[len++] = '\t';
            break;
        case 'u': {
            int32_t hi = json_hex4(c->s, c->pos, end);
            uint32_t cp;
            if (hi < 0) {
                c->pos = escape_at;
                json_fail(c, "invalid \\u escape");
                goto fail;
            }
            c->pos += 4;
            if (hi >= 0xdc00 && hi <= 0xdfff) {
                c->pos = escape_at;
                json_fail(c, "unpaired low surrogate in \\u escape");
                goto fail;
            }
            if (hi >= 0xd800 && hi <= 0xdbff) {
                int32_t lo = -1;
                if (c->pos + 1 < end && c->s[c->pos] == '\\' && c->s[c->pos + 1] == 'u')
                    lo = json_hex4(c->s, c->pos + 2, end);
                if (lo < 0xdc00 || lo > 0xdfff) {
                    c->pos = escape_at;
                    json_fail(c, "unpaired high surrogate in \\u escape");
                    goto fail;
                }
                c->pos += 6;
                cp = 0x10000 + (((uint32_t)hi - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
            } else {
                cp = (uint32_t)hi;
            }
            len += utf8_encode(cp, buf + len);
            break;
        }
        default:
            c->pos = escape_at;
            json_fail(c, "invalid escape in string");
            goto fail;
        }
    }
    buf[len] = '\0';
    c->pos = end + 1;
    *out = buf;
    *out_len = len;
    return MG_OK;
fail:
    mg_free(buf);
    return c->err->code;
}

/* An integer within int64 range; fractions and exponents are rejected, not truncated. */
static mg_code json_int(json_cursor *c, int64_t *out) {
    json_skip_ws(c);
    size_t p = c->pos;
    bool neg = p < c->n && c->s[p] == '-';
    if (neg) p++;
    if (p >= c->n || c->s[p] < '0' || c->s[p] > '9') return json_fail(c, "expected an integer");
    if (c->s[p] == '0' && p + 1 < c->n && c->s[p + 1] >= '0' && c->s[p + 1] <= '9')
        return json_fail(c, "integer with a leading zero");
    uint64_t v = 0;
    while (p < c->n && c->s[p] >= '0' && c->s[p] <= '9') {
        uint64_t d = (uint64_t)(c->s[p] - '0');
        if (v > ((uint64_t)INT64_MAX - d) / 10) return json_fail(c, "integer out of range");
        v = v * 10 + d;
        p++;
    }
    if (p < c->n && (c->s[p] == '.' || c->s[p] == 'e' || c->s[p] == 'E')) {
        c->pos = p;
        return json_fail(c, "expected an integer, found a fraction or exponent");
    }
    c->pos = p;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return MG_OK;
}

/* [int, ...]: stores the first max values and counts all of them in *count. */
static mg_code json_int_array(json_cursor *c, int64_t *vals, int max, int *count) {
    *count = 0;
    if (json_expect(c, '[') != MG_OK) return c->err->code;
    if (json_peek(c) == ']') {
        c->pos++;
        return MG_OK;
    }
    for (;;) {
        int64_t v = 0;
        if (json_int(c, &v) != MG_OK) return c->err->code;
        if (*count < max) vals[*count] = v;
        /* A cap on the count keeps it in range; the caller rejects anything above max. */
        if (*count <= max) (*count)++;
        int ch = json_peek(c);
        if (ch == ']') {
            c->pos++;
            return MG_OK;
        }
        if (ch != ',') return json_fail(c, "expected ',' or ']'");
        c->pos++;
    }
}

/* After a member: ',' (more follow, returns 1) or '}' (done, returns 0); -1 on error. */
static int json_next_member(json_cursor *c) {
    int ch = json_peek(c);
    c->pos++;
    if (ch == ',') return 1;
    if (ch == '}') return 0;
    c->pos--;
    json_fail(c, "expected ',' or '}'");
    return -1;
}

/* ---- the header's meaning ---- */

typedef struct {
    json_cursor c;
    const mg_st_skip *skip; /* tensors to leave unread, or NULL */
    uint64_t data_size;     /* bytes after the header */
    mg_st_entry *entries;
    int count, cap;
} st_parser;

static const char *dtype_name(mg_st_dtype d) {
    return d == MG_ST_F32 ? "F32" : d == MG_ST_F16 ? "F16" : "BF16";
}

static size_t dtype_size(mg_st_dtype d) {
    return d == MG_ST_F32 ? 4 : 2;
}

static mg_code st_grow(st_parser *p) {
    if (p->count < p->cap) return MG_OK;
    if (p->cap > INT32_MAX / 2)
        return mg_fail(p->c.err, MG_ERR_FORMAT, "safetensors header lists too many tensors");
    int cap = p->cap ? p->cap * 2 : 16;
    mg_st_entry *e = mg_alloc((size_t)cap, sizeof(mg_st_entry), "safetensors entries", p->c.err);
    if (e == NULL) return p->c.err->code;
    if (p->count) memcpy(e, p->entries, (size_t)p->count * sizeof(mg_st_entry));
    mg_free(p->entries);
    p->entries = e;
    p->cap = cap;
    return MG_OK;
}

static bool st_skipped(const st_parser *p, const mg_st_entry *t) {
    if (p->skip == NULL) return false;
    for (int i = 0; i < p->skip->count; i++)
        if (p->skip->lens[i] == t->name_len && memcmp(p->skip->names[i], t->name, t->name_len) == 0)
            return true;
    return false;
}

/* {"dtype": str, "shape": [int], "data_offsets": [int, int]} in any order, each once. */
static mg_code st_tensor_info(st_parser *p, mg_st_entry *t) {
    json_cursor *c = &p->c;
    mg_error *err = c->err;
    int nl = t->name_len > 200 ? 200 : (int)t->name_len;
    /* cut on a UTF-8 character boundary, or the message would not decode */
    while (nl > 0 && nl < (int)t->name_len && ((unsigned char)t->name[nl] & 0xC0) == 0x80)
        nl--;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    char *key = NULL, *dtype = NULL;
    if (json_expect(c, '{') != MG_OK) return err->code;
    int more = 1;
    if (json_peek(c) == '}') {
        c->pos++;
        more = 0;
    }
    while (more) {
        size_t key_len;
        if (json_string(c, &key, &key_len) != MG_OK || json_expect(c, ':') != MG_OK) goto fail;
        if (strcmp(key, "dtype") == 0 && key_len == 5 && !have_dtype) {
            size_t dlen;
            if (json_string(c, &dtype, &dlen) != MG_OK) goto fail;
            if (st_skipped(p, t)) {
                t->skipped = 1; /* not read: its dtype does not matter */
            } else if (strcmp(dtype, "F32") == 0) {
                t->dtype = MG_ST_F32;
            } else if (strcmp(dtype, "F16") == 0) {
                t->dtype = MG_ST_F16;
            } else if (strcmp(dtype, "BF16") == 0) {
                t->dtype = MG_ST_BF16;
            } else {
                mg_fail(err, MG_ERR_UNSUPPORTED,
                        "safetensors tensor '%.*s' has dtype '%.32s', which magnet does not read "
                        "(F32, F16 and BF16 only)",
                        nl, t->name, dtype);
                goto fail;
            }
            have_dtype = true;
        } else if (strcmp(key, "shape") == 0 && key_len == 5 && !have_shape) {
            int ndim;
            if (json_int_array(c, t->tensor.shape, MG_MAX_DIMS, &ndim) != MG_OK) goto fail;
            if (ndim > MG_MAX_DIMS) {
                mg_fail(err, MG_ERR_UNSUPPORTED,
                        "safetensors tensor '%.*s' has more than %d dimensions", nl, t->name,
                        MG_MAX_DIMS);
                goto fail;
            }
            t->tensor.ndim = ndim;
            have_shape = true;
        } else if (strcmp(key, "data_offsets") == 0 && key_len == 12 && !have_offsets) {
            int64_t off[2];
            int n;
            if (json_int_array(c, off, 2, &n) != MG_OK) goto fail;
            if (n != 2 || off[0] < 0 || off[1] < 0) {
                mg_fail(err, MG_ERR_FORMAT,
                        "safetensors tensor '%.*s': data_offsets must be two non-negative "
                        "integers",
                        nl, t->name);
                goto fail;
            }
            t->begin = (uint64_t)off[0];
            t->end = (uint64_t)off[1];
            have_offsets = true;
        } else {
            int kl = (int)strnlen(key, 40);
            while (kl > 0 && key[kl] && ((unsigned char)key[kl] & 0xC0) == 0x80)
                kl--;
            mg_fail(err, MG_ERR_FORMAT,
                    "safetensors tensor '%.*s' has an unexpected or repeated key '%.*s'", nl,
                    t->name, kl, key);
            goto fail;
        }
        mg_free(key);
        mg_free(dtype);
        key = dtype = NULL;
        more = json_next_member(c);
        if (more < 0) goto fail;
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return mg_fail(err, MG_ERR_FORMAT, "safetensors tensor '%.*s' lacks %s", nl, t->name,
                       !have_dtype   ? "'dtype'"
                       : !have_shape ? "'shape'"
                                     : "'data_offsets'");

    if (t->begin > t->end || t->end > p->data_size)
        return mg_fail(err, MG_ERR_FORMAT,
                       "safetensors tensor '%.*s' has data_offsets [%llu, %llu] outside the "
                       "%llu-byte data section",
                       nl, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                       (unsigned long long)p->data_size);
    if (t->skipped) return MG_OK; /* element size unknown: the byte range alone is checked */
    uint64_t numel = 1;
    for (int d = 0; d < t->tensor.ndim; d++) {
        int64_t dim = t->tensor.shape[d];
        if (dim < 0)
            return mg_fail(err, MG_ERR_FORMAT,
                           "safetensors tensor '%.*s' has a negative dimension %lld", nl, t->name,
                           (long long)dim);
        if (dim != 0 && numel > (uint64_t)INT64_MAX / (uint64_t)dim)
            return mg_fail(err, MG_ERR_FORMAT, "safetensors tensor '%.*s' has an absurd shape", nl,
                           t->name);
        numel *= (uint64_t)dim;
    }
    uint64_t size = dtype_size(t->dtype);
    if (numel > (uint64_t)INT64_MAX / size)
        return mg_fail(err, MG_ERR_FORMAT, "safetensors tensor '%.*s' has an absurd shape", nl,
                       t->name);
    if (t->end - t->begin != numel * size)
        return mg_fail(err, MG_ERR_FORMAT,
                       "safetensors tensor '%.*s' (%s, %llu elements) needs %llu bytes but its "
                       "data_offsets span %llu",
                       nl, t->name, dtype_name(t->dtype), (unsigned long long)numel,
                       (unsigned long long)(numel * size), (unsigned long long)(t->end - t->begin));
    return MG_OK;
fail:
    mg_free(key);
    mg_free(dtype);
    return err->code;
}

/* "__metadata__": {str: str} (or null); checked for form, then discarded. */
static mg_code st_metadata(st_parser *p) {
    json_cursor *c = &p->c;
    if (json_peek(c) == 'n') {
        if (c->n - c->pos >= 4 && memcmp(c->s + c->pos, "null", 4) == 0) {
            c->pos += 4;
            return MG_OK;
        }
        return json_fail(c, "expected an object or null for __metadata__");
    }
    if (json_expect(c, '{') != MG_OK) return c->err->code;
    if (json_peek(c) == '}') {
        c->pos++;
        return MG_OK;
    }
    for (;;) {
        char *k, *v;
        size_t klen, vlen;
        if (json_string(c, &k, &klen) != MG_OK) return c->err->code;
        mg_free(k);
        if (json_expect(c, ':') != MG_OK) return c->err->code;
        if (json_string(c, &v, &vlen) != MG_OK) return c->err->code;
        mg_free(v);
        int more = json_next_member(c);
        if (more < 0) return c->err->code;
        if (more == 0) return MG_OK;
    }
}

static mg_code st_header(st_parser *p) {
    json_cursor *c = &p->c;
    bool have_metadata = false;
    if (json_expect(c, '{') != MG_OK) return c->err->code;
    int more = 1;
    if (json_peek(c) == '}') {
        c->pos++;
        more = 0;
    }
    while (more) {
        char *name;
        size_t name_len;
        if (json_string(c, &name, &name_len) != MG_OK) return c->err->code;
        if (name_len == 12 && strcmp(name, "__metadata__") == 0) {
            mg_free(name);
            if (have_metadata) return json_fail(c, "repeated __metadata__");
            have_metadata = true;
            if (json_expect(c, ':') != MG_OK || st_metadata(p) != MG_OK) return c->err->code;
        } else {
            if (st_grow(p) != MG_OK) {
                mg_free(name);
                return c->err->code;
            }
            /* The entry owns the name from here, so the caller's cleanup frees it. */
            mg_st_entry *t = &p->entries[p->count++];
            memset(t, 0, sizeof(*t));
            t->name = name;
            t->name_len = name_len;
            if (json_expect(c, ':') != MG_OK || st_tensor_info(p, t) != MG_OK) return c->err->code;
        }
        more = json_next_member(c);
        if (more < 0) return c->err->code;
    }
    json_skip_ws(c); /* writers pad the header with spaces to an 8-byte boundary */
    if (c->pos != c->n) return json_fail(c, "unexpected data after the header object");
    return MG_OK;
}

static int cmp_by_name(const void *a, const void *b) {
    const mg_st_entry *x = *(const mg_st_entry *const *)a, *y = *(const mg_st_entry *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int r = memcmp(x->name, y->name, n);
    if (r) return r;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int cmp_by_offset(const void *a, const void *b) {
    const mg_st_entry *x = *(const mg_st_entry *const *)a, *y = *(const mg_st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* Duplicate names would be ambiguous; overlapping ranges would let a small file claim many
 * copies of its data, so output memory stays bounded by twice the file size. */
static mg_code st_check_unique(st_parser *p) {
    if (p->count < 2) return MG_OK;
    mg_error *err = p->c.err;
    mg_st_entry **order =
        mg_alloc((size_t)p->count, sizeof(mg_st_entry *), "safetensors index", err);
    if (order == NULL) return err->code;
    for (int i = 0; i < p->count; i++)
        order[i] = &p->entries[i];
    qsort(order, (size_t)p->count, sizeof(*order), cmp_by_name);
    for (int i = 1; i < p->count; i++)
        if (cmp_by_name(&order[i - 1], &order[i]) == 0) {
            mg_fail(err, MG_ERR_FORMAT, "safetensors header names tensor '%.*s' twice",
                    order[i]->name_len > 200 ? 200 : (int)order[i]->name_len, order[i]->name);
            goto done;
        }
    qsort(order, (size_t)p->count, sizeof(*order), cmp_by_offset);
    for (int i = 1; i < p->count; i++)
        if (order[i]->begin < order[i - 1]->end) {
            mg_fail(err, MG_ERR_FORMAT, "safetensors tensors '%.*s' and '%.*s' overlap",
                    order[i - 1]->name_len > 100 ? 100 : (int)order[i - 1]->name_len,
                    order[i - 1]->name, order[i]->name_len > 100 ? 100 : (int)order[i]->name_len,
                    order[i]->name);
            goto done;
        }
done:
    mg_free(order);
    return err->code;
}

/* ---- conversion: exact, in place, from the little-endian bytes at the buffer's start ---- */

static float bits_to_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* Every half is exactly representable as a float: subnormals are renormalised, inf and NaN
 * (payload included) keep their class. */
static uint32_t half_to_float_bits(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) return sign | 0x7f800000u | (mant << 13);
    if (exp != 0) return sign | ((exp + 112) << 23) | (mant << 13);
    if (mant == 0) return sign;
    /* value = mant * 2^-24; shift until the implicit bit appears, lowering the exponent. */
    uint32_t e = 113;
    while (!(mant & 0x400)) {
        mant <<= 1;
        e--;
    }
    return sign | (e << 23) | ((mant & 0x3ff) << 13);
}

/* The buffer holds n 16-bit values in its first 2n bytes; backwards, so each float written
 * (bytes 4i..4i+3) only covers halves already consumed (indices >= i). */
static void convert16(float *out, size_t n, bool bf16) {
    const unsigned char *in = (const unsigned char *)out;
    for (size_t i = n; i-- > 0;) {
        uint16_t h = (uint16_t)(in[2 * i] | (in[2 * i + 1] << 8));
        float f = bits_to_float(bf16 ? (uint32_t)h << 16 : half_to_float_bits(h));
        memcpy(&out[i], &f, sizeof(f));
    }
}

static void convert32(float *out, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    unsigned char *b = (unsigned char *)out;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                     (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        out[i] = bits_to_float(v);
    }
#else
    (void)out;
    (void)n;
#endif
}

/* ---- the file ---- */

void mg_safetensors_free(mg_safetensors *st) {
    if (st == NULL) return;
    for (int i = 0; i < st->count; i++) {
        mg_free(st->entries[i].name);
        mg_free(st->entries[i].tensor.data);
    }
    mg_free(st->entries);
    st->entries = NULL;
    st->count = 0;
}

static mg_code read_exact(FILE *f, uint64_t offset, void *buf, size_t n, const char *path,
                          mg_error *err) {
    if (n == 0) return MG_OK;
    if ((uint64_t)(off_t)offset != offset || offset > (uint64_t)INT64_MAX ||
        fseeko(f, (off_t)offset, SEEK_SET) != 0)
        return mg_fail(err, MG_ERR_IO, "cannot seek to byte %llu of %s: %s",
                       (unsigned long long)offset, path, strerror(errno));
    size_t got = fread(buf, 1, n, f);
    if (got != n) {
        if (ferror(f))
            return mg_fail(err, MG_ERR_IO, "read error in %s: %s", path, strerror(errno));
        return mg_fail(err, MG_ERR_FORMAT, "%s ended early (truncated while reading)", path);
    }
    return MG_OK;
}

mg_code mg_safetensors_read(const char *path, const mg_st_skip *skip, mg_safetensors *out,
                            mg_error *err) {
    out->entries = NULL;
    out->count = 0;
    st_parser p;
    memset(&p, 0, sizeof(p));
    p.skip = skip;
    char *header = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (errno == ENOENT || errno == ENOTDIR)
            return mg_fail(err, MG_ERR_NOT_FOUND, "safetensors file not found: %s", path);
        return mg_fail(err, MG_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        mg_fail(err, MG_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        mg_fail(err, MG_ERR_IO, "%s is not a regular file", path);
        goto fail;
    }
    uint64_t file_size = (uint64_t)sb.st_size;
    if (file_size < 8) {
        mg_fail(err, MG_ERR_FORMAT, "%s is too short (%llu bytes) to be a safetensors file", path,
                (unsigned long long)file_size);
        goto fail;
    }
    unsigned char len_bytes[8];
    if (read_exact(f, 0, len_bytes, 8, path, err) != MG_OK) goto fail;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | len_bytes[i];
    if (header_len > MG_SAFETENSORS_MAX_HEADER || header_len > file_size - 8) {
        mg_fail(err, MG_ERR_FORMAT,
                "%s: safetensors header length %llu exceeds the %llu bytes available "
                "(or the %llu-byte limit)",
                path, (unsigned long long)header_len, (unsigned long long)(file_size - 8),
                (unsigned long long)MG_SAFETENSORS_MAX_HEADER);
        goto fail;
    }
    header = mg_alloc((size_t)header_len + 1, 1, "safetensors header", err);
    if (header == NULL || read_exact(f, 8, header, (size_t)header_len, path, err) != MG_OK)
        goto fail;

    p.c.s = header;
    p.c.n = (size_t)header_len;
    p.c.err = err;
    p.data_size = file_size - 8 - header_len;
    if (st_header(&p) != MG_OK || st_check_unique(&p) != MG_OK) goto fail;
    mg_free(header);
    header = NULL;

    for (int i = 0; i < p.count; i++) {
        mg_st_entry *t = &p.entries[i];
        if (t->skipped) continue;
        size_t numel = (size_t)((t->end - t->begin) / dtype_size(t->dtype));
        /* Room for the float32 result; the raw bytes are read into its start. */
        t->tensor.data = mg_alloc(numel, sizeof(float), "safetensors tensor", err);
        if (t->tensor.data == NULL) goto fail;
        if (read_exact(f, 8 + header_len + t->begin, t->tensor.data, (size_t)(t->end - t->begin),
                       path, err) != MG_OK)
            goto fail;
        if (t->dtype == MG_ST_F32)
            convert32(t->tensor.data, numel);
        else
            convert16(t->tensor.data, numel, t->dtype == MG_ST_BF16);
    }
    fclose(f);
    out->entries = p.entries;
    out->count = p.count;
    return MG_OK;
fail:
    fclose(f);
    mg_free(header);
    mg_safetensors st = {p.entries, p.count};
    mg_safetensors_free(&st);
    return err->code;
}
