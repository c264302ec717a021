#include "trainer.h"

#include <math.h>
#include <string.h>

#include "../core/alloc.h"
#include "../ops/adamw.h"
#include "../ops/attention.h"
#include "../ops/loss.h"
#include "../ops/matmul.h"

/* Rows of logits materialised at once for the token losses: bounds memory by 256 x V. */
#define LOSS_CHUNK 256

mg_trainer *mg_trainer_create(mg_model *model, const mg_train_config *cfg, mg_error *err) {
    if (!cfg->full_finetune && model->lora == NULL) {
        mg_fail(err, MG_ERR_VALUE, "LoRA training needs adapters attached to the model");
        return NULL;
    }
    if (!(cfg->lr >= 0.0f) || !(cfg->temperature > 0.0f) || cfg->total_steps < 0 ||
        cfg->warmup_steps < 0 || !(cfg->lora_dropout >= 0.0f && cfg->lora_dropout < 1.0f) ||
        !(cfg->resid_dropout >= 0.0f && cfg->resid_dropout < 1.0f)) {
        mg_fail(err, MG_ERR_VALUE, "invalid training configuration (learning rate, temperature, "
                                   "steps or dropout out of range)");
        return NULL;
    }
    mg_trainer *t = mg_alloc(1, sizeof(mg_trainer), "trainer", err);
    if (t == NULL) return NULL;
    t->model = model;
    t->cfg = *cfg;
    const size_t n = mg_trainer_numel(t);
    float **g = cfg->full_finetune ? &t->grads.params : &t->grads.lora;
    float **m = cfg->full_finetune ? &t->m_params : &t->m_lora;
    float **v = cfg->full_finetune ? &t->v_params : &t->v_lora;
    *g = mg_alloc(n, sizeof(float), "gradients", err);
    *m = mg_alloc(n, sizeof(float), "optimizer moments", err);
    *v = mg_alloc(n, sizeof(float), "optimizer moments", err);
    if (err->code != MG_OK) {
        mg_trainer_free(t);
        return NULL;
    }
    return t;
}

void mg_trainer_free(mg_trainer *t) {
    if (t == NULL) return;
    mg_free(t->grads.params);
    mg_free(t->grads.lora);
    mg_free(t->m_params);
    mg_free(t->v_params);
    mg_free(t->m_lora);
    mg_free(t->v_lora);
    mg_free(t);
}

size_t mg_trainer_numel(const mg_trainer *t) {
    return t->cfg.full_finetune ? t->model->params.numel : t->model->lora->numel;
}

float *mg_trainer_params(const mg_trainer *t) {
    return t->cfg.full_finetune ? t->model->params.block : t->model->lora->block;
}

float *mg_trainer_grads(const mg_trainer *t) {
    return t->cfg.full_finetune ? t->grads.params : t->grads.lora;
}

float mg_trainer_lr(const mg_train_config *cfg, int step) {
    if (cfg->warmup_steps > 0 && step < cfg->warmup_steps)
        return cfg->lr * (float)(step + 1) / (float)cfg->warmup_steps;
    const int span = cfg->total_steps - cfg->warmup_steps;
    if (span <= 0) return cfg->lr;
    double progress = (double)(step - cfg->warmup_steps) / (double)span;
    if (progress > 1.0) progress = 1.0;
    const double cosine = 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(cfg->lr * (cfg->min_lr_ratio + (1.0 - cfg->min_lr_ratio) * cosine));
}

static int check_rows(const mg_token_rows *r, const char *what, int min_len, mg_error *err) {
    if (r->rows < 0 || (r->rows > 0 && (r->tokens == NULL || r->lengths == NULL || r->T <= 0)))
        return mg_fail(err, MG_ERR_VALUE, "%s: invalid batch shape", what);
    for (int i = 0; i < r->rows; i++)
        if (r->lengths[i] < min_len || r->lengths[i] > r->T)
            return mg_fail(err, MG_ERR_VALUE, "%s: row %d has length %d (allowed %d..%d)", what, i,
                           r->lengths[i], min_len, r->T);
    return MG_OK;
}

/* Gathers hidden rows at `idx`, scores them with the LM head, and adds the cross-entropy
 * gradient (scaled by grad_scale) back into dhidden (and the LM head's gradient when trained). */
static int token_loss(mg_trainer *t, const float *hidden, float *dhidden, const long *idx,
                      const int32_t *labels, long count, float grad_scale, int train,
                      double *loss_sum, float *buf, mg_error *err) {
    const mg_model *m = t->model;
    const int D = m->config.dim, V = m->config.vocab_size;
    float *h = buf, *logits = buf + (size_t)LOSS_CHUNK * D, *dh = logits + (size_t)LOSS_CHUNK * V;
    int32_t lab[LOSS_CHUNK];
    float *dhead = t->grads.params ? t->grads.params + (m->params.lm_head - m->params.block) : NULL;
    for (long c0 = 0; c0 < count; c0 += LOSS_CHUNK) {
        const int c = (int)(count - c0 < LOSS_CHUNK ? count - c0 : LOSS_CHUNK);
        for (int i = 0; i < c; i++) {
            memcpy(h + (size_t)i * D, hidden + idx[c0 + i] * D, sizeof(float) * D);
            lab[i] = labels[c0 + i];
        }
        matmul_forward(logits, h, m->params.lm_head, NULL, c, D, V, false);
        double part = 0.0;
        long n = 0;
        if (cross_entropy_forward_backward(logits, lab, c, V, grad_scale, &part, &n, err) != MG_OK)
            return err->code;
        *loss_sum += part;
        if (!train) continue;
        memset(dh, 0, sizeof(float) * (size_t)c * D);
        matmul_backward(dh, dhead, NULL, logits, h, m->params.lm_head, c, D, V);
        for (int i = 0; i < c; i++) {
            float *dst = dhidden + idx[c0 + i] * D;
            for (int d = 0; d < D; d++) dst[d] += dh[(size_t)i * D + d];
        }
    }
    return MG_OK;
}

/* Where an SSCL sequence sits in the combined batch: SSCL sequences are packed several to a row
 * (each its own segment, positions restarting at 0), so short sentences do not pad to T. */
typedef struct {
    long first;    /* index of its first token in the [R * T] batch */
    int len;       /* tokens, EOS included */
    int pool_from; /* first pooled token (mean pooling): the text after the instruction */
} sscl_place;

/* Sentence vectors: the last token's state, or the mean from pool_from on. */
static void pool_sentences(float *out, const float *hidden, const sscl_place *pl, int n,
                           mg_pooling pooling, int D) {
    for (int r = 0; r < n; r++) {
        float *o = out + (size_t)r * D;
        const float *base = hidden + (size_t)pl[r].first * D;
        if (pooling == MG_POOL_LAST) {
            memcpy(o, base + (size_t)(pl[r].len - 1) * D, sizeof(float) * D);
            continue;
        }
        memset(o, 0, sizeof(float) * D);
        for (int i = pl[r].pool_from; i < pl[r].len; i++)
            for (int d = 0; d < D; d++) o[d] += base[(size_t)i * D + d];
        const float inv = 1.0f / (float)(pl[r].len - pl[r].pool_from);
        for (int d = 0; d < D; d++) o[d] *= inv;
    }
}

/* The backward of pool_sentences: spreads each vector's gradient over the pooled tokens. */
static void unpool_sentences(float *dhidden, const float *dvec, const sscl_place *pl, int n,
                             mg_pooling pooling, int D) {
    for (int r = 0; r < n; r++) {
        float *base = dhidden + (size_t)pl[r].first * D;
        const float *g = dvec + (size_t)r * D;
        const int from = pooling == MG_POOL_LAST ? pl[r].len - 1 : pl[r].pool_from;
        const float w = 1.0f / (float)(pl[r].len - from);
        for (int i = from; i < pl[r].len; i++)
            for (int d = 0; d < D; d++) base[(size_t)i * D + d] += w * g[d];
    }
}

int mg_trainer_micro_step(mg_trainer *t, const mg_micro_batch *mb, int train, mg_losses *out,
                          mg_error *err) {
    mg_model *m = t->model;
    const mg_config *c = &m->config;
    memset(out, 0, sizeof(*out));
    const int use_masked = (mb->w_mntp > 0.0f || mb->w_msg > 0.0f) && mb->masked.rows > 0;
    const int use_sscl = mb->w_sscl > 0.0f && mb->sscl_a.rows >= 2;
    if (check_rows(&mb->masked, "masked-view batch", 1, err) ||
        check_rows(&mb->sscl_a, "SSCL batch", 1, err))
        return err->code;
    if (use_sscl && mb->sscl_b.tokens != NULL) {
        if (mb->sscl_b.rows != mb->sscl_a.rows)
            return mg_fail(err, MG_ERR_VALUE, "SSCL positives: %d rows for %d anchors",
                           mb->sscl_b.rows, mb->sscl_a.rows);
        if (check_rows(&mb->sscl_b, "SSCL positives", 1, err)) return err->code;
    }
    for (int pass = 0; pass < 2 && mb->pooling == MG_POOL_MEAN && use_sscl; pass++) {
        const mg_token_rows *r = pass ? &mb->sscl_b : &mb->sscl_a;
        const int32_t *ps = pass ? mb->pool_start_b : mb->pool_start_a;
        if (r->tokens == NULL || ps == NULL) continue;
        for (int i = 0; i < r->rows; i++)
            if (ps[i] < 0 || ps[i] >= r->lengths[i])
                return mg_fail(err, MG_ERR_VALUE, "SSCL row %d: pool start %d outside 0..%d", i,
                               ps[i], r->lengths[i] - 1);
    }
    const int Bm = use_masked ? mb->masked.rows : 0, Bs = use_sscl ? mb->sscl_a.rows : 0;
    const mg_token_rows *pos_rows = mb->sscl_b.tokens ? &mb->sscl_b : &mb->sscl_a;
    const int32_t *ps_b = mb->sscl_b.tokens ? mb->pool_start_b : mb->pool_start_a;
    int T = 0;
    if (Bm) T = mb->masked.T;
    if (Bs && mb->sscl_a.T > T) T = mb->sscl_a.T;
    if (Bs && mb->sscl_b.tokens && mb->sscl_b.T > T) T = mb->sscl_b.T;
    /* anchors then positives, first fit into rows of T tokens after the masked-view rows */
    sscl_place *places = mg_alloc((size_t)2 * Bs + 1, sizeof(sscl_place), "SSCL layout", err);
    if (places == NULL) return err->code;
    int R = Bm, fill = T;
    for (int i = 0; i < 2 * Bs; i++) {
        const mg_token_rows *src = i < Bs ? &mb->sscl_a : pos_rows;
        const int32_t *ps = i < Bs ? mb->pool_start_a : ps_b;
        const int r = i % Bs, len = src->lengths[r];
        if (fill + len > T) {
            R++;
            fill = 0;
        }
        places[i].first = (long)(R - 1) * T + fill;
        places[i].len = len;
        places[i].pool_from = ps ? ps[r] : 0;
        fill += len;
    }
    if (R == 0) {
        mg_free(places);
        return mg_fail(err, MG_ERR_VALUE, "micro-batch has nothing to train on");
    }
    const long N = (long)R * T;
    const int D = c->dim;

    mg_masking_config masking = t->cfg.masking;
    masking.use_spans = masking.use_spans && mb->w_msg > 0.0f;
    if (!(mb->w_msg > 0.0f)) masking.all_span_frac = 0.0f;

    int32_t *tokens = mg_alloc((size_t)N * 4, sizeof(int32_t), "training batch", err);
    uint8_t *roles = mg_alloc((size_t)N, 1, "training roles", err);
    long *idx = mg_alloc((size_t)N, sizeof(long), "loss rows", err);
    float *dhidden = mg_alloc((size_t)N, sizeof(float) * (size_t)D, "hidden gradients", err);
    float *loss_buf = mg_alloc_uninit((size_t)LOSS_CHUNK * (2 * (size_t)D + c->vocab_size),
                                      sizeof(float), "loss buffers", err);
    float *pooled = mg_alloc((size_t)Bs * 4 + 1, sizeof(float) * (size_t)D, "sentence vectors",
                             err);
    float *nce = mg_alloc(INFONCE_SCRATCH(Bs > 0 ? Bs : 1, D), sizeof(float), "InfoNCE scratch",
                          err);
    mg_activations acts;
    mg_kv_cache cache;
    memset(&acts, 0, sizeof(acts));
    memset(&cache, 0, sizeof(cache));
    if (err->code != MG_OK) goto done;
    int32_t *segs = tokens + N, *mntp_lab = segs + N, *msg_lab = mntp_lab + N;
    for (long n = 0; n < N; n++) {
        tokens[n] = 0;
        segs[n] = -1;
        mntp_lab[n] = msg_lab[n] = MG_IGNORE_LABEL;
    }
    for (int r = 0; r < Bm; r++) {
        const int len = mb->masked.lengths[r];
        const long o = (long)r * T;
        mg_masked_view(mb->masked.tokens + (long)r * mb->masked.T, len, &masking, mb->seed,
                       (uint64_t)r, tokens + o, roles + o, mntp_lab + o, msg_lab + o);
        for (int i = 0; i < len; i++) segs[o + i] = 0;
    }
    for (int i = 0; i < 2 * Bs; i++) {
        const mg_token_rows *src = i < Bs ? &mb->sscl_a : pos_rows;
        const long o = places[i].first;
        const int32_t seg = (int32_t)(o % T == 0 ? 0 : segs[o - 1] + 1); /* next id in its row */
        memcpy(tokens + o, src->tokens + (long)(i % Bs) * src->T, sizeof(int32_t) * places[i].len);
        for (int k = 0; k < places[i].len; k++) {
            segs[o + k] = seg;
            roles[o + k] = MG_ROLE_CONTEXT;
        }
    }
    for (long n = 0; n < N; n++) out->tokens += segs[n] >= 0;

    if (mg_activations_init(&acts, c, m->lora, N, err) != MG_OK) goto done;
    if (mg_kv_cache_init(&cache, c, R, T, c->n_layers, err) != MG_OK) goto done;
    mg_segment_positions(acts.pos, segs, R, T);
    const mg_train_pass pass = {&acts, train ? t->cfg.resid_dropout : 0.0f,
                                train ? t->cfg.lora_dropout : 0.0f, mb->seed};
    if (mg_model_step_ex(m, &cache, tokens, roles, segs, acts.pos, R, T, NULL, NULL, 0, &pass,
                         err) != MG_OK)
        goto done;

    /* MNTP and MSG: two cross-entropies over disjoint label sets of the masked view */
    const int32_t *label_sets[2] = {mntp_lab, msg_lab};
    const float weights[2] = {mb->w_mntp, mb->w_msg};
    double *means[2] = {&out->mntp, &out->msg};
    long *counts[2] = {&out->mntp_count, &out->msg_count};
    for (int s = 0; s < 2; s++) {
        if (!(weights[s] > 0.0f)) continue;
        long count = 0;
        for (long n = 0; n < (long)Bm * T; n++)
            if (label_sets[s][n] != MG_IGNORE_LABEL) idx[count++] = n;
        if (count == 0) continue;
        int32_t *lab = (int32_t *)mg_alloc((size_t)count, sizeof(int32_t), "labels", err);
        if (lab == NULL) goto done;
        for (long i = 0; i < count; i++) lab[i] = label_sets[s][idx[i]];
        double sum = 0.0;
        token_loss(t, acts.hidden, dhidden, idx, lab, count,
                   weights[s] * mb->grad_scale / (float)count, train, &sum, loss_buf, err);
        mg_free(lab);
        if (err->code != MG_OK) goto done;
        *means[s] = sum / (double)count;
        *counts[s] = count;
    }
    /* SSCL: InfoNCE between the pooled anchor and positive rows */
    if (Bs) {
        float *a = pooled, *b = pooled + (size_t)Bs * D, *da = b + (size_t)Bs * D,
              *db = da + (size_t)Bs * D;
        pool_sentences(a, acts.hidden, places, Bs, mb->pooling, D);
        pool_sentences(b, acts.hidden, places + Bs, Bs, mb->pooling, D);
        float loss = 0.0f;
        infonce_forward_backward(&loss, da, db, a, b, Bs, D, t->cfg.temperature,
                                 mb->w_sscl * mb->grad_scale, nce);
        out->sscl = loss;
        out->sscl_count = Bs;
        if (train) {
            unpool_sentences(dhidden, da, places, Bs, mb->pooling, D);
            unpool_sentences(dhidden, db, places + Bs, Bs, mb->pooling, D);
        }
    }
    if (train)
        mg_model_backward(m, &t->grads, &pass, &cache, dhidden, tokens, roles, segs, R, T, err);
done:
    mg_free(places);
    mg_activations_release(&acts);
    mg_kv_cache_release(&cache);
    mg_free(tokens);
    mg_free(roles);
    mg_free(idx);
    mg_free(dhidden);
    mg_free(loss_buf);
    mg_free(pooled);
    mg_free(nce);
    return err->code;
}

int mg_trainer_apply(mg_trainer *t, double *grad_norm, float *lr_used, mg_error *err) {
    const size_t n = mg_trainer_numel(t);
    float *grads = mg_trainer_grads(t), *params = mg_trainer_params(t);
    float *m = t->cfg.full_finetune ? t->m_params : t->m_lora;
    float *v = t->cfg.full_finetune ? t->v_params : t->v_lora;
    const float *bufs[1] = {grads};
    const long lens[1] = {(long)n};
    const double norm = grad_global_norm(bufs, lens, 1);
    *grad_norm = norm;
    if (!isfinite(norm))
        return mg_fail(err, MG_ERR_VALUE, "gradient norm is not finite at step %d", t->step);
    if (t->cfg.clip_norm > 0.0f) {
        const float f = grad_clip_factor(norm, t->cfg.clip_norm);
        if (f < 1.0f) {
#pragma omp parallel for schedule(static)
            for (long i = 0; i < (long)n; i++) grads[i] *= f;
        }
    }
    const float lr = mg_trainer_lr(&t->cfg, t->step);
    *lr_used = lr;
    adamw_update(params, grads, m, v, (long)n, lr, t->cfg.beta1, t->cfg.beta2, t->cfg.eps,
                 t->cfg.weight_decay, t->step + 1);
    memset(grads, 0, sizeof(float) * n);
    t->step++;
    return MG_OK;
}
