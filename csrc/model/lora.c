#include "lora.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../core/alloc.h"
#include "../core/rng.h"
#include "transfer.h"

static const char *const target_names[MG_LORA_TARGETS] = {"wq",     "wk",   "wv",    "wo",
                                                          "w_gate", "w_up", "w_down"};

static void target_shape(const mg_config *c, mg_lora_target t, int *in, int *out) {
    const int D = c->dim, F = c->hidden_dim;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    switch (t) {
    case MG_LORA_Q:
        *in = D, *out = QD;
        break;
    case MG_LORA_K:
    case MG_LORA_V:
        *in = D, *out = KD;
        break;
    case MG_LORA_O:
        *in = QD, *out = D;
        break;
    case MG_LORA_GATE:
    case MG_LORA_UP:
        *in = D, *out = F;
        break;
    default:
        *in = F, *out = D;
        break;
    }
}

mg_lora *mg_lora_create(const mg_config *c, int rank, float alpha, unsigned targets, uint64_t seed,
                        mg_error *err) {
    if (rank <= 0 || rank > 4096) {
        mg_fail(err, MG_ERR_VALUE, "lora_rank must be in 1..4096, got %d", rank);
        return NULL;
    }
    if (!(alpha > 0.0f) || !isfinite(alpha)) {
        mg_fail(err, MG_ERR_VALUE, "lora_alpha must be positive, got %g", alpha);
        return NULL;
    }
    if (c->arch == MG_ARCH_GPT2) targets &= ~(1u << MG_LORA_GATE);
    if ((targets & ((1u << MG_LORA_TARGETS) - 1)) == 0) {
        mg_fail(err, MG_ERR_VALUE, "no LoRA target selected");
        return NULL;
    }
    mg_lora *l = mg_alloc(1, sizeof(mg_lora), "LoRA adapters", err);
    if (l == NULL) return NULL;
    l->rank = rank;
    l->alpha = alpha;
    l->scale = alpha / (float)rank;
    l->targets = targets;
    l->n_layers = c->n_layers;
    l->be = mg_backend_cpu();
    l->pairs =
        mg_alloc((size_t)c->n_layers * MG_LORA_TARGETS, sizeof(mg_lora_pair), "LoRA table", err);
    l->slots = mg_alloc((size_t)c->n_layers * MG_LORA_TARGETS * 2, sizeof(mg_param_slot),
                        "LoRA slots", err);
    if (err->code != MG_OK) goto fail;
    size_t total = 0;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int t = 0; t < MG_LORA_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            int in, out;
            target_shape(c, t, &in, &out);
            total += (size_t)rank * (in + out);
        }
    l->block = mg_alloc(total, sizeof(float), "LoRA parameters", err);
    if (l->block == NULL) goto fail;
    l->numel = total;
    size_t off = 0;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int t = 0; t < MG_LORA_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            mg_lora_pair *p = &l->pairs[layer * MG_LORA_TARGETS + t];
            target_shape(c, t, &p->in, &p->out);
            p->rank = rank;
            p->A = l->block + off;
            p->B = p->A + (size_t)rank * p->in;
            const float bound = 1.0f / sqrtf((float)p->in);
            const uint64_t stream = (uint64_t)layer * MG_LORA_TARGETS + t;
            for (size_t i = 0; i < (size_t)rank * p->in; i++)
                p->A[i] = (2.0f * mg_rng_uniform(seed, stream, i) - 1.0f) * bound;
            const struct {
                const char *suffix;
                float *data;
                int64_t rows, cols;
            } parts[2] = {{"lora_A", p->A, rank, p->in}, {"lora_B", p->B, p->out, rank}};
            for (int k = 0; k < 2; k++) {
                mg_param_slot *s = &l->slots[l->n_slots++];
                snprintf(s->name, sizeof(s->name), "layers.%d.%s.%s", layer, target_names[t],
                         parts[k].suffix);
                s->ndim = 2;
                s->shape[0] = parts[k].rows;
                s->shape[1] = parts[k].cols;
                s->numel = (size_t)(parts[k].rows * parts[k].cols);
                s->offset = (size_t)(parts[k].data - l->block);
            }
            off += (size_t)rank * (p->in + p->out);
        }
    return l;
fail:
    mg_lora_free(l);
    return NULL;
}

void mg_lora_free(mg_lora *l) {
    if (l == NULL) return;
    if (l->be != NULL && l->be->device != MG_DEVICE_CPU)
        l->be->free(l->be, l->block);
    else
        mg_free(l->block);
    mg_free(l->pairs);
    mg_free(l->slots);
    mg_free(l);
}

mg_lora *mg_lora_copy_to(const mg_lora *l, const mg_backend *be, mg_error *err) {
    mg_lora *c = mg_alloc(1, sizeof(mg_lora), "LoRA adapters", err);
    if (c == NULL) return NULL;
    *c = *l;
    c->be = be;
    c->block = NULL;
    const size_t n_pairs = (size_t)l->n_layers * MG_LORA_TARGETS;
    c->pairs = mg_alloc(n_pairs, sizeof(mg_lora_pair), "LoRA table", err);
    c->slots =
        mg_alloc((size_t)(l->n_slots ? l->n_slots : 1), sizeof(mg_param_slot), "LoRA slots", err);
    if (err->code == MG_OK)
        c->block = be->device == MG_DEVICE_CPU
                       ? mg_alloc_uninit(l->numel, sizeof(float), "LoRA parameters", err)
                       : be->alloc(be, l->numel * sizeof(float), "LoRA parameters", err);
    if (err->code != MG_OK) {
        mg_lora_free(c);
        return NULL;
    }
    memcpy(c->slots, l->slots, sizeof(mg_param_slot) * (size_t)l->n_slots);
    for (size_t i = 0; i < n_pairs; i++) {
        c->pairs[i] = l->pairs[i];
        if (l->pairs[i].A) {
            c->pairs[i].A = c->block + (l->pairs[i].A - l->block);
            c->pairs[i].B = c->block + (l->pairs[i].B - l->block);
        }
    }
    if (copy_between(l->be, be, c->block, l->block, l->numel * sizeof(float), err) != MG_OK) {
        mg_lora_free(c);
        return NULL;
    }
    return c;
}

void lora_forward(const mg_backend *be, const mg_lora_site *sites, int n, const float *inp, int N,
                  float scale, float p, uint64_t seed, float *drop_buf) {
    if (n <= 0) return;
    const int r = sites[0].pair->rank, in = sites[0].pair->in;
    if (p > 0.0f) {
        mg_dropped_product prods[MG_DROPPED_MAX];
        for (int t = 0; t < n; t++)
            prods[t] =
                (mg_dropped_product){sites[t].pair->A, sites[t].stream, sites[t].u, NULL, NULL};
        be->dropped_matmul_forward(be, inp, N, in, r, p, seed, prods, n, drop_buf);
    }
    for (int t = 0; t < n; t++) {
        const mg_lora_site *s = &sites[t];
        if (p <= 0.0f)
            be->sgemm(be, false, true, N, r, in, 1.0f, inp, in, s->pair->A, in, 0.0f, s->u, r);
        be->sgemm(be, false, true, N, s->pair->out, r, scale, s->u, r, s->pair->B, r, 1.0f, s->out,
                  s->ldo);
    }
}

void lora_backward(const mg_backend *be, float *dinp, const mg_lora_site *sites, int n,
                   const float *inp, int N, float scale, float p, uint64_t seed, float *scratch) {
    if (n <= 0) return;
    const int r = sites[0].pair->rank, in = sites[0].pair->in;
    float *dx = scratch + (long)n * N * r; /* [N, in] after the sites' du [N, r] */
    mg_dropped_product prods[MG_DROPPED_MAX];
    for (int t = 0; t < n; t++) {
        const mg_lora_site *s = &sites[t];
        float *du = scratch + (long)t * N * r;
        /* dB += scale * dout^T u;  du = scale * dout B */
        if (s->dB)
            be->sgemm(be, true, false, s->pair->out, r, N, scale, s->dout, s->ldd, s->u, r, 1.0f,
                      s->dB, r);
        be->sgemm(be, false, false, N, r, s->pair->out, scale, s->dout, s->ldd, s->pair->B, r, 0.0f,
                  du, r);
        prods[t] = (mg_dropped_product){s->pair->A, s->stream, NULL, du, s->dA};
    }
    if (p > 0.0f) {
        be->dropped_matmul_backward(be, dinp, inp, N, in, r, p, seed, prods, n, dx);
        return;
    }
    for (int t = 0; t < n; t++) {
        if (prods[t].dA)
            be->sgemm(be, true, false, r, in, N, 1.0f, prods[t].du, r, inp, in, 1.0f, prods[t].dA,
                      in);
        if (dinp) /* dinp += du A: the product adds in place (beta = 1) */
            be->sgemm(be, false, false, N, in, r, 1.0f, prods[t].du, r, prods[t].A, in, 1.0f, dinp,
                      in);
    }
}

float *mg_lora_base_weight(mg_params *params, int layer, mg_lora_target t) {
    mg_layer_params *L = &params->layers[layer];
    float *const w[MG_LORA_TARGETS] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    return w[t];
}

void mg_lora_merge(const mg_backend *be, const mg_lora *l, mg_params *params, const mg_config *c) {
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int t = 0; t < MG_LORA_TARGETS; t++) {
            const mg_lora_pair *p = mg_lora_get(l, layer, t);
            if (p == NULL) continue;
            float *W = mg_lora_base_weight(params, layer, t);
            be->sgemm(be, false, false, p->out, p->in, l->rank, l->scale, p->B, l->rank, p->A,
                      p->in, 1.0f, W, p->in);
        }
}
