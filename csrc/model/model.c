#include "model.h"

#include <math.h>
#include <string.h>

#include "../core/alloc.h"

/* Inverse frequencies theta^(-2k/hd), rounded to float32 as the reference does, then rescaled
 * by the rope_scaling type: "linear" divides all by the factor; "llama3" divides the low
 * frequencies (wavelength above original_ctx / low_freq_factor), keeps the high ones (below
 * original_ctx / high_freq_factor) and interpolates smoothly in between. */
static void rope_inv_freq(float *inv_freq, const mg_config *c) {
    const int half = c->head_dim / 2;
    for (int k = 0; k < half; k++) {
        float f = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * k) / c->head_dim));
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
    if (pthread_rwlock_init(&m->guard, NULL) != 0) {
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

void mg_model_attach_lora(mg_model *m, mg_lora *lora) {
    mg_lora_free(m->lora);
    m->lora = lora;
}

void mg_model_merge_lora(mg_model *m) {
    if (m->lora == NULL) return;
    mg_lora_merge(m->lora, &m->params, &m->config);
    mg_lora_free(m->lora);
    m->lora = NULL;
}

void mg_model_free(mg_model *m) {
    if (m == NULL) return;
    mg_lora_free(m->lora);
    pthread_rwlock_destroy(&m->guard);
    mg_params_release(&m->params);
    mg_free(m->inv_freq);
    mg_free(m);
}
