/* ggml block layouts decoded to float32. Each quantized type stores a run of elements (a block)
 * as small integers plus one or more half-precision scales; the layouts follow ggml-common.h. */
#include "dequantize.h"

#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF data is little-endian; this reader decodes it with plain loads"
#endif

typedef struct {
    const char *name;
    int64_t block_elems;
    size_t block_bytes;
} ggml_type_info;

/* Indexed by ggml type id; ids ggml retired (4, 5, 31-33, 36-38) have no name. */
static const ggml_type_info TYPES[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},         [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},      [6] = {"Q5_0", 32, 22},      [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 40},      [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},   [12] = {"Q4_K", 256, 144},   [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},   [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74},  [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110},  [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},         [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},        [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},   [30] = {"BF16", 1, 2},       [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},   [39] = {"MXFP4", 32, 17},    [40] = {"NVFP4", 64, 36},
    [41] = {"Q1_0", 128, 18},
};
#define N_TYPES (sizeof(TYPES) / sizeof(TYPES[0]))

const char *mg_ggml_type_name(uint32_t type) {
    return type < N_TYPES ? TYPES[type].name : NULL;
}

int mg_ggml_block_geometry(uint32_t type, int64_t *block_elems, size_t *block_bytes) {
    if (type >= N_TYPES || TYPES[type].name == NULL) return -1;
    *block_elems = TYPES[type].block_elems;
    *block_bytes = TYPES[type].block_bytes;
    return 0;
}

int mg_ggml_type_supported(uint32_t type) {
    switch (type) {
    case MG_GGML_F32:
    case MG_GGML_F16:
    case MG_GGML_BF16:
    case MG_GGML_Q8_0:
    case MG_GGML_Q4_0:
    case MG_GGML_Q4_1:
    case MG_GGML_Q4_K:
    case MG_GGML_Q5_K:
    case MG_GGML_Q6_K:
        return 1;
    default:
        return 0;
    }
}

float mg_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf / nan keep their payload */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13); /* rebias 15 -> 127 */
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* subnormal half: normalise the mantissa, every one is a normal float */
        exp = 113;
        while ((mant & 0x400) == 0) {
            mant <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

float mg_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline float load_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return mg_f16_to_f32(h);
}

/* Q8_0: f16 scale d, 32 int8 q; x = d * q. */
static void dequant_q8_0(const uint8_t *src, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, src += 34, dst += 32) {
        const float d = load_f16(src);
        const int8_t *q = (const int8_t *)(src + 2);
        for (int j = 0; j < 32; j++)
            dst[j] = d * (float)q[j];
    }
}

/* Q4_0: f16 d, 16 bytes of nibbles; low nibbles are elements 0-15, high nibbles 16-31;
 * x = d * (q - 8). */
static void dequant_q4_0(const uint8_t *src, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, src += 18, dst += 32) {
        const float d = load_f16(src);
        const uint8_t *q = src + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((q[j] & 0x0f) - 8);
            dst[j + 16] = d * (float)((q[j] >> 4) - 8);
        }
    }
}

/* Q4_1: f16 d, f16 m, nibbles as Q4_0; x = d * q + m. */
static void dequant_q4_1(const uint8_t *src, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, src += 20, dst += 32) {
        const float d = load_f16(src), m = load_f16(src + 2);
        const uint8_t *q = src + 4;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)(q[j] & 0x0f) + m;
            dst[j + 16] = d * (float)(q[j] >> 4) + m;
        }
    }
}

/* K-quants pack eight 6-bit (scale, min) pairs into 12 bytes: pairs 0-3 sit in the low six bits
 * of bytes 0-7; pairs 4-7 take four bits from bytes 8-11 and their top two from the spare high
 * bits of bytes 0-7. */
static inline void k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes; 8 sub-blocks of 32,
 * x = d * sc * q - dmin * mn. Each 32-byte group holds two sub-blocks (low, then high nibbles). */
static void dequant_q4_k(const uint8_t *src, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, src += 144) {
        const float d = load_f16(src), dmin = load_f16(src + 2);
        const uint8_t *scales = src + 4, *q = src + 16;
        for (int g = 0; g < 4; g++, q += 32) {
            uint8_t sc0, mn0, sc1, mn1;
            k_scale_min(2 * g, scales, &sc0, &mn0);
            k_scale_min(2 * g + 1, scales, &sc1, &mn1);
            const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
            for (int l = 0; l < 32; l++)
                *dst++ = d0 * (float)(q[l] & 0x0f) - m0;
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)(q[l] >> 4) - m1;
        }
    }
}

/* Q5_K: as Q4_K plus 32 bytes qh giving each element a fifth bit; sub-block s takes bit s of
 * qh[l]. */
static void dequant_q5_k(const uint8_t *src, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, src += 176) {
        const float d = load_f16(src), dmin = load_f16(src + 2);
        const uint8_t *scales = src + 4, *qh = src + 16, *q = src + 48;
        for (int g = 0; g < 4; g++, q += 32) {
            uint8_t sc0, mn0, sc1, mn1;
            k_scale_min(2 * g, scales, &sc0, &mn0);
            k_scale_min(2 * g + 1, scales, &sc1, &mn1);
            const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
            const uint8_t u0 = (uint8_t)(1u << (2 * g)), u1 = (uint8_t)(2u << (2 * g));
            for (int l = 0; l < 32; l++)
                *dst++ = d0 * (float)((q[l] & 0x0f) + ((qh[l] & u0) ? 16 : 0)) - m0;
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)((q[l] >> 4) + ((qh[l] & u1) ? 16 : 0)) - m1;
        }
    }
}

/* Q6_K: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8 scales, f16 d; 16
 * sub-blocks of 16, x = d * scale * (q - 32). Each half of 128 elements uses 64 ql bytes, 32 qh
 * bytes and 8 scales, four elements per (ql, qh) byte pair. */
static void dequant_q6_k(const uint8_t *src, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, src += 210) {
        const uint8_t *ql = src, *qh = src + 128;
        const int8_t *sc = (const int8_t *)(src + 192);
        const float d = load_f16(src + 208);
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, dst += 128) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                dst[l] = d * (float)sc[is] * (float)q1;
                dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

mg_code mg_dequantize(uint32_t type, const void *src, float *dst, int64_t n, mg_error *err) {
    int64_t be;
    size_t bb;
    if (mg_ggml_block_geometry(type, &be, &bb) != 0)
        return mg_fail(err, MG_ERR_UNSUPPORTED, "unknown ggml tensor type %u", type);
    if (!mg_ggml_type_supported(type))
        return mg_fail(err, MG_ERR_UNSUPPORTED,
                       "ggml tensor type %s is not supported (magnet reads F32, F16, BF16, Q8_0, "
                       "Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)",
                       TYPES[type].name);
    if (n < 0 || n % be != 0)
        return mg_fail(err, MG_ERR_FORMAT, "%lld elements is not a whole number of %s blocks",
                       (long long)n, TYPES[type].name);
    const uint8_t *s = src;
    const int64_t nb = n / be;
    switch (type) {
    case MG_GGML_F32:
        memcpy(dst, s, (size_t)n * sizeof(float));
        break;
    case MG_GGML_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = load_f16(s + 2 * i);
        break;
    case MG_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, sizeof(h));
            dst[i] = mg_bf16_to_f32(h);
        }
        break;
    case MG_GGML_Q8_0:
        dequant_q8_0(s, dst, nb);
        break;
    case MG_GGML_Q4_0:
        dequant_q4_0(s, dst, nb);
        break;
    case MG_GGML_Q4_1:
        dequant_q4_1(s, dst, nb);
        break;
    case MG_GGML_Q4_K:
        dequant_q4_k(s, dst, nb);
        break;
    case MG_GGML_Q5_K:
        dequant_q5_k(s, dst, nb);
        break;
    case MG_GGML_Q6_K:
        dequant_q6_k(s, dst, nb);
        break;
    default:
        break; /* excluded by mg_ggml_type_supported above */
    }
    return MG_OK;
}
