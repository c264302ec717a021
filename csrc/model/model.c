#include "model.h"

#include "transfer.h"

#include <math.h>
#include <string.h>

#include "../core/alloc.h"

/* Inverse frequencies theta^(-2k/hd), computed in float32 as transformers (1 / base ** (arange
 * (0, hd, 2).float() / hd)) and llama2.c (1.0f / powf(theta, 2k / (float)hd)) do: the double
 * power rounded once differs from theirs by an ulp in a third of the entries, which moves
 * logits by 2e-4 at position 4096 of a model with sharp attention. Then rescaled
 * by the rope_scaling type: "linear" divides all by the factor; "llama3" divides the low
 * frequencies (wavelength above original_ctx / low_freq_factor), keeps the high ones (below
 * original_ctx / high_freq_factor) and interpolates smoothly in between. */
static void rope_inv_freq(float *inv_freq, const mg_config *c) {
    const int half = c->head_dim / 2;
    for (int k = 0; k < half; k++) {
        float f = 1.0f / powf((float)c->rope_theta, (float)(2 * k) / (float)c->head_dim);
        if (c->rope_type == MG_ROPE_LINEAR) {
            f = f / c->rope_factor;
        } else if (c->rope_type == MG_ROPE_LLAMA3) {
            const float old_ctx = (float)c->rope_original_max_positions;
            const float low_wavelen = old_ctx / c->rope_low_freq_factor;
            const float high_wavelen = old_ctx / c->rope_high_freq_factor;
            const float wavelen = 2.0f * (float)M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / c->rope_factor;
            } else if (!(wavelen < high_wavelen)) {
                const float smooth = (old_ctx / wavelen - c->rope_low_freq_factor) /
                                     (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0f - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[k] = f;
    }
}

/* The model's guard, writer-preferring where the C library can say so (glibc): readers come and
 * go per call, so with overlapping readers (two or more threads calling the model in a loop) a
 * reader-preferring lock never let an optimizer step or a merge in. No thread takes the guard
 * twice (each binding takes it once per call), so a waiting writer cannot deadlock a reader. */
static int init_guard(pthread_rwlock_t *guard) {
    pthread_rwlockattr_t attr;
    if (pthread_rwlockattr_init(&attr) != 0) return -1;
#ifdef __GLIBC__
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    const int rc = pthread_rwlock_init(guard, &attr);
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

mg_model *mg_model_create(const mg_config *config, const mg_named_tensor *tensors, int count,
                          mg_error *err) {
    if (mg_config_validate(config, err) != MG_OK) return NULL;
    if (config->head_dim > MG_MAX_HEAD_DIM) {
        mg_fail(err, MG_ERR_UNSUPPORTED, "head_dim=%d exceeds the supported %d", config->head_dim,
                MG_MAX_HEAD_DIM);
        return NULL;
    }
    mg_model *m = mg_alloc(1, sizeof(mg_model), "model", err);
    if (m == NULL) return NULL;
    m->config = *config;
    m->be = mg_backend_cpu();
    if (init_guard(&m->guard) != 0) {
        mg_fail(err, MG_ERR_NOMEM, "cannot create the model's lock");
        mg_free(m);
        return NULL;
    }
    if (mg_params_create(&m->params, config, tensors, count, err) != MG_OK) {
        pthread_rwlock_destroy(&m->guard);
        mg_free(m);
        return NULL;
    }
    if (config->arch == MG_ARCH_LLAMA) {
        m->inv_freq = mg_alloc((size_t)config->head_dim / 2, sizeof(float), "rope table", err);
        if (m->inv_freq == NULL) {
            mg_model_free(m);
            return NULL;
        }
        rope_inv_freq(m->inv_freq, config);
    }
    return m;
}

int mg_model_attach_lora(mg_model *m, mg_lora *lora, mg_error *err) {
    if (lora != NULL && lora->be != m->be) {
        mg_lora *moved = mg_lora_copy_to(lora, m->be, err);
        mg_lora_free(lora);
        if (moved == NULL) return err->code;
        lora = moved;
    }
    mg_lora_free(m->lora);
    m->lora = lora;
    m->lora_version++;
    return MG_OK;
}

void mg_model_merge_lora(mg_model *m) {
    if (m->lora == NULL) return;
    mg_lora_merge(m->be, m->lora, &m->params, &m->config);
    mg_lora_free(m->lora);
    m->lora = NULL;
    m->lora_version++;
}

/* Frees what lives in the backend's memory and forgets it, so the host-side release that
 * follows frees only host memory. */
static void release_backend_memory(mg_model *m) {
    if (m->be == NULL || m->be->device == MG_DEVICE_CPU) return;
    m->be->free(m->be, m->params.block);
    m->be->free(m->be, m->inv_freq);
    m->params.block = NULL;
    m->inv_freq = NULL;
}

void mg_model_free(mg_model *m) {
    if (m == NULL) return;
    mg_lora_free(m->lora);
    pthread_rwlock_destroy(&m->guard);
    release_backend_memory(m);
    mg_params_release(&m->params);
    mg_free(m->inv_freq);
    if (m->owned_be) mg_backend_cuda_free(m->owned_be);
    mg_free(m);
}

/* Moves a pointer into `from`'s block to the same offset in `to`'s. */
static float *rebase(float *p, const float *from, float *to) {
    return p == NULL ? NULL : to + (p - from);
}

mg_model *mg_model_copy_to(const mg_model *src, const mg_backend *be, int owns_be, mg_error *err) {
    mg_model *m = mg_alloc(1, sizeof(mg_model), "model", err);
    if (m == NULL) {
        if (owns_be) mg_backend_cuda_free((mg_backend *)be);
        return NULL;
    }
    m->config = src->config;
    m->be = be;
    m->owned_be = owns_be ? (mg_backend *)be : NULL;
    if (init_guard(&m->guard) != 0) {
        mg_fail(err, MG_ERR_NOMEM, "cannot create the model's lock");
        if (owns_be) mg_backend_cuda_free((mg_backend *)be);
        mg_free(m);
        return NULL;
    }
    const mg_params *sp = &src->params;
    mg_params *p = &m->params;
    const int on_host = be->device == MG_DEVICE_CPU;
    *p = *sp;
    p->block = NULL;
    p->slots = NULL;
    p->layers = NULL;
    p->slots = mg_alloc((size_t)sp->n_slots, sizeof(mg_param_slot), "parameter slots", err);
    p->layers = mg_alloc((size_t)src->config.n_layers, sizeof(mg_layer_params), "layer table", err);
    if (on_host)
        p->block = mg_alloc_uninit(sp->numel, sizeof(float), "parameters", err);
    else if (err->code == MG_OK)
        p->block = be->alloc(be, sp->numel * sizeof(float), "parameters", err);
    if (src->inv_freq != NULL && err->code == MG_OK) {
        const size_t bytes = sizeof(float) * (size_t)(src->config.head_dim / 2);
        m->inv_freq = on_host ? mg_alloc(bytes, 1, "rope table", err)
                              : be->alloc(be, bytes, "rope table", err);
        if (m->inv_freq) copy_between(src->be, be, m->inv_freq, src->inv_freq, bytes, err);
    }
    if (err->code == MG_OK)
        copy_between(src->be, be, p->block, sp->block, sp->numel * sizeof(float), err);
    if (err->code != MG_OK) {
        mg_model_free(m);
        return NULL;
    }
    memcpy(p->slots, sp->slots, sizeof(mg_param_slot) * (size_t)sp->n_slots);
    float *const from = sp->block, *to = p->block;
    p->tok_embeddings = rebase(sp->tok_embeddings, from, to);
    p->pos_embeddings = rebase(sp->pos_embeddings, from, to);
    p->final_norm_w = rebase(sp->final_norm_w, from, to);
    p->final_norm_b = rebase(sp->final_norm_b, from, to);
    p->lm_head = rebase(sp->lm_head, from, to);
    for (int l = 0; l < src->config.n_layers; l++) {
        const mg_layer_params *a = &sp->layers[l];
        mg_layer_params *b = &p->layers[l];
        float *const *fa = (float *const *)a;
        float **fb = (float **)b;
        /* every field of mg_layer_params is a float pointer into the block */
        for (size_t k = 0; k < sizeof(mg_layer_params) / sizeof(float *); k++)
            fb[k] = rebase(fa[k], from, to);
    }
    if (src->lora != NULL) {
        m->lora = mg_lora_copy_to(src->lora, be, err);
        if (m->lora == NULL) {
            mg_model_free(m);
            return NULL;
        }
    }
    return m;
}
