#include "sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

double sampling_uniform(uint64_t seed, uint64_t step, uint64_t row) {
    uint64_t h = splitmix64(seed);
    h = splitmix64(h ^ step);
    h = splitmix64(h ^ (row * 0xD1B54A32D192ED03ULL));
    return (double)(h >> 11) * 0x1.0p-53;
}

/* NaN logits take no part (a model that computes NaN for one token must not lose every other
 * token's probability, nor win the greedy choice): as in sampling, where they weigh 0. */
float sampling_logprob(const float *logits, int V, int token) {
    float m = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > m) m = logits[i]; /* NaN never compares greater */
    double z = 0.0;
    for (int i = 0; i < V; i++)
        if (!isnan(logits[i])) z += exp((double)logits[i] - m);
    return (float)((double)logits[token] - m - log(z));
}

/* The first index of the largest logit that is not NaN; 0 when all are NaN. */
static int argmax_skipping_nan(const float *x, int V) {
    int chosen = -1;
    float best = -INFINITY;
    for (int i = 0; i < V; i++)
        if (x[i] > best || (chosen < 0 && x[i] == best)) {
            best = x[i];
            chosen = i;
        }
    return chosen < 0 ? 0 : chosen;
}

void sampling_greedy_rows(const float *logits, int rows, int V, int32_t *tokens, float *logprobs) {
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (long)r * V;
        const int chosen = argmax_skipping_nan(x, V);
        tokens[r] = chosen;
        logprobs[r] = sampling_logprob(x, V, chosen);
    }
}

/* Sort key: weight (>= 0, so its IEEE bits order like the value) high, inverted id low, so a
 * descending sort gives larger weights first and, among ties, lower ids first. */
static uint64_t pack(float w, int32_t id) {
    uint32_t bits;
    memcpy(&bits, &w, sizeof(bits));
    return ((uint64_t)bits << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)id);
}

static int32_t unpack_id(uint64_t key) {
    return (int32_t)(0xFFFFFFFFu - (uint32_t)(key & 0xFFFFFFFFu));
}

static int by_key_descending(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x < y) - (x > y);
}

/* Reorders idx[0..n) so its first k entries hold the k largest f (quickselect). */
static void select_top(int32_t *idx, int n, int k, const float *f) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const float pivot = f[idx[lo + (hi - lo) / 2]];
        int i = lo, j = hi;
        while (i <= j) {
            while (f[idx[i]] > pivot)
                i++;
            while (f[idx[j]] < pivot)
                j--;
            if (i <= j) {
                const int32_t t = idx[i];
                idx[i++] = idx[j];
                idx[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* Keeps the most probable candidates whose mass before them is below top_p (Hugging Face's
 * TopPLogitsWarper). Only candidates above a weight threshold are sorted: the threshold is
 * lowered until the sorted ones hold enough mass, so the usual case sorts a few hundred. */
static int top_p_filter(int32_t *idx, int n, const float *w, double total, double top_p,
                        uint64_t *keys) {
    static const float thresholds[] = {1e-2f, 1e-4f, 1e-6f, 1e-9f, 0.0f};
    const double target = top_p * total;
    int g = 0;
    for (unsigned t = 0; t < sizeof(thresholds) / sizeof(thresholds[0]); t++) {
        double mass = 0.0;
        g = 0;
        for (int c = 0; c < n; c++)
            if (w[idx[c]] >= thresholds[t]) {
                keys[g++] = pack(w[idx[c]], idx[c]);
                mass += w[idx[c]];
            }
        if (mass >= target) break;
    }
    qsort(keys, (size_t)g, sizeof(uint64_t), by_key_descending);
    double before = 0.0;
    int keep = 0;
    while (keep < g && (keep == 0 || before < target)) {
        const int32_t id = unpack_id(keys[keep]);
        before += w[id];
        idx[keep++] = id;
    }
    return keep;
}

int sampling_choose(const float *logits, int V, const uint8_t *seen, const sampling_params *p,
                    double u, uint64_t *scratch, float *raw_logprob) {
    float *f = (float *)scratch;
    int32_t *idx = (int32_t *)(scratch + ((size_t)V + 1) / 2);
    uint64_t *keys = scratch + ((size_t)V + 1) / 2 * 2;
    const double rp = p->repetition_penalty;
    for (int i = 0; i < V; i++) {
        float x = logits[i];
        if (seen != NULL && seen[i] && rp != 1.0) x = (float)(x > 0.0f ? x / rp : x * rp);
        f[i] = x;
    }
    int chosen = 0;
    if (!p->do_sample) {
        chosen = argmax_skipping_nan(f, V);
    } else {
        /* (x - max) / t in double: <= 0, so no overflow to inf (inf - inf would be NaN) for any
         * t > 0; a tiny t leaves the maximum at 0 and sends the rest to -inf (weight 0). A NaN
         * logit gets weight 0; when some logits are +inf, they share all the weight. */
        float m = -INFINITY;
        for (int i = 0; i < V; i++)
            if (f[i] > m) m = f[i];    /* NaN never compares greater */
        if (m == -INFINITY) return -1; /* every logit NaN or -inf: nothing can be sampled */
        for (int i = 0; i < V; i++)
            f[i] = isnan(f[i])     ? -INFINITY
                   : m == INFINITY ? (f[i] == INFINITY ? 0.0f : -INFINITY)
                                   : (float)(((double)f[i] - m) / p->temperature);
        int n = V;
        for (int i = 0; i < V; i++)
            idx[i] = i;
        if (p->top_k > 0 && p->top_k < V) {
            select_top(idx, V, p->top_k, f);
            float kth = f[idx[0]];
            for (int c = 1; c < p->top_k; c++)
                if (f[idx[c]] < kth) kth = f[idx[c]];
            n = 0; /* every logit >= the k-th largest stays (ties included, as Hugging Face) */
            for (int i = 0; i < V; i++)
                if (f[i] >= kth) idx[n++] = i;
        }
        double total = 0.0;
        for (int c = 0; c < n; c++) {
            f[idx[c]] = expf(f[idx[c]]); /* weights; the maximum has weight 1 */
            total += f[idx[c]];
        }
        if (p->top_p < 1.0) n = top_p_filter(idx, n, f, total, p->top_p, keys);
        if (p->min_p > 0.0) { /* the most probable token (weight 1) always survives */
            int kept = 0;
            for (int c = 0; c < n; c++)
                if (f[idx[c]] >= p->min_p) idx[kept++] = idx[c];
            n = kept;
        }
        total = 0.0;
        for (int c = 0; c < n; c++)
            total += f[idx[c]];
        const double target = u * total;
        double acc = 0.0;
        if (n == 0) return -1; /* not reached: the maximum (weight 1) passes every filter */
        chosen = idx[n - 1];
        for (int c = 0; c < n; c++) {
            acc += f[idx[c]];
            if (acc > target) {
                chosen = idx[c];
                break;
            }
        }
    }
    if (raw_logprob != NULL) *raw_logprob = sampling_logprob(logits, V, chosen);
    return chosen;
}
