#include "trainer.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "../core/alloc.h"
#include "../ops/adamw.h"
#include "../ops/attention.h"
#include "../ops/loss.h"
#include "../ops/matmul.h"
#include "transfer.h"
#include "workspace.h"

/* Rows of logits materialised at once for the token losses: bounds memory by 256 x V. */
#define LOSS_CHUNK 256

mg_trainer *mg_trainer_create(mg_model *model, const mg_train_config *cfg, mg_error *err) {
    if (!cfg->full_finetune && model->lora == NULL) {
        mg_fail(err, MG_ERR_VALUE, "LoRA training needs adapters attached to the model");
        return NULL;
    }
    if (!(cfg->lr >= 0.0f && isfinite(cfg->lr)) || !(cfg->temperature > 0.0f) ||
        cfg->total_steps < 0 || cfg->warmup_steps < 0 ||
        !(cfg->lora_dropout >= 0.0f && cfg->lora_dropout < 1.0f) ||
        !(cfg->resid_dropout >= 0.0f && cfg->resid_dropout < 1.0f)) {
        mg_fail(err, MG_ERR_VALUE,
                "invalid training configuration (learning rate, temperature, "
                "steps or dropout out of range)");
        return NULL;
    }
    mg_trainer *t = mg_alloc(1, sizeof(mg_trainer), "trainer", err);
    if (t == NULL) return NULL;
    t->model = model;
    t->lora_version = model->lora_version;
    t->cfg = *cfg;
    const size_t n = mg_trainer_numel(t);
    float **g = cfg->full_finetune ? &t->grads.params : &t->grads.lora;
    float **m = cfg->full_finetune ? &t->m_params : &t->m_lora;
    float **v = cfg->full_finetune ? &t->v_params : &t->v_lora;
    const mg_backend *be = model->be;
    if (mg_on_host(be)) {
        *g = mg_alloc(n, sizeof(float), "gradients", err);
        *m = mg_alloc(n, sizeof(float), "optimizer moments", err);
        *v = mg_alloc(n, sizeof(float), "optimizer moments", err);
    } else {
        *g = be->alloc(be, n * sizeof(float), "gradients", err);
        if (*g) *m = be->alloc(be, n * sizeof(float), "optimizer moments", err);
        if (*m) *v = be->alloc(be, n * sizeof(float), "optimizer moments", err);
    }
    if (err->code != MG_OK) {
        mg_trainer_free(t);
        return NULL;
    }
    return t;
}

void mg_trainer_free(mg_trainer *t) {
    if (t == NULL) return;
    mg_activations_release(&t->acts);
    float *blocks[6] = {t->grads.params, t->grads.lora, t->m_params,
                        t->v_params,     t->m_lora,     t->v_lora};
    const mg_backend *be = t->model->be;
    for (int i = 0; i < 6; i++) {
        if (mg_on_host(be))
            mg_free(blocks[i]);
        else if (blocks[i])
            be->free(be, blocks[i]);
    }
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

/* Checks the rows' lengths and their token ids. The ids are checked here, not only by the
 * forward: the masked view replaces some with the mask id and keeps the originals as labels,
 * which the forward never sees. */
static int check_rows(const mg_token_rows *r, const char *what, int min_len, int vocab_size,
                      mg_error *err) {
    if (r->rows < 0 || (r->rows > 0 && (r->tokens == NULL || r->lengths == NULL || r->T <= 0)))
        return mg_fail(err, MG_ERR_VALUE, "%s: invalid batch shape", what);
    for (int i = 0; i < r->rows; i++) {
        if (r->lengths[i] < min_len || r->lengths[i] > r->T)
            return mg_fail(err, MG_ERR_VALUE, "%s: row %d has length %d (allowed %d..%d)", what, i,
                           r->lengths[i], min_len, r->T);
        const int32_t *row = r->tokens + (long)i * r->T;
        for (int j = 0; j < r->lengths[i]; j++)
            if (row[j] < 0 || row[j] >= vocab_size)
                return mg_fail(err, MG_ERR_VALUE,
                               "%s: token id %d (row %d, position %d) is out of range for "
                               "vocab_size %d",
                               what, row[j], i, j, vocab_size);
    }
    return MG_OK;
}

/* Rows of logits materialised at once for the token losses: LOSS_CHUNK on the CPU (cache
 * sized); on a GPU as many as fit in 256 MiB, so each chunk's GEMMs fill the device and the
 * per-chunk loss readback is rare. */
static long loss_chunk(const mg_backend *be, int V) {
    if (mg_on_host(be)) return LOSS_CHUNK;
    const long rows = (256L << 20) / ((long)V * (long)sizeof(float));
    return rows < LOSS_CHUNK ? LOSS_CHUNK : (rows > 4096 ? 4096 : rows);
}

/* Floats of backend memory that token_loss needs for up to `count` rows. */
static size_t token_loss_floats(const mg_backend *be, int D, int V, long count) {
    const size_t chunk = (size_t)loss_chunk(be, V);
    return chunk * (2 * (size_t)D + (size_t)V) + mg_stage_bytes(be, (size_t)count * 12) / 4 + 4;
}

/* Gathers hidden rows at `idx`, scores them with the LM head, and adds the cross-entropy
 * gradient (scaled by grad_scale) back into dhidden (and the LM head's gradient when trained).
 * idx and labels are host arrays (staged into backend memory once); buf holds
 * token_loss_floats(count) floats of backend memory. */
static int token_loss(mg_trainer *t, const float *hidden, float *dhidden, const int64_t *idx,
                      const int32_t *labels, long count, float grad_scale, int train,
                      double *loss_sum, float *buf, mg_error *err) {
    const mg_model *m = t->model;
    const mg_backend *be = m->be;
    const int D = m->config.dim, V = m->config.vocab_size;
    const long chunk = loss_chunk(be, V);
    float *h = buf, *logits = buf + (size_t)chunk * D, *dh = logits + (size_t)chunk * V;
    void *idx_dev = dh + (size_t)chunk * D;
    void *lab_dev = (char *)idx_dev + sizeof(int64_t) * (size_t)count;
    const int64_t *all_rows = mg_stage(be, idx_dev, idx, sizeof(int64_t) * (size_t)count);
    const int32_t *all_labels = mg_stage(be, lab_dev, labels, sizeof(int32_t) * (size_t)count);
    float *dhead = t->grads.params ? t->grads.params + (m->params.lm_head - m->params.block) : NULL;
    for (long c0 = 0; c0 < count; c0 += chunk) {
        const int c = (int)(count - c0 < chunk ? count - c0 : chunk);
        const int64_t *rows = all_rows + c0;
        be->gather_rows(be, h, hidden, rows, c, D);
        be->matmul_forward(be, logits, h, m->params.lm_head, NULL, c, D, V, false);
        double part = 0.0;
        long n = 0;
        be->cross_entropy(be, logits, all_labels + c0, c, V, grad_scale, &part, &n);
        *loss_sum += part;
        if (!train) continue;
        be->zero(be, dh, sizeof(float) * (size_t)c * D);
        be->matmul_backward(be, dh, dhead, NULL, logits, h, m->params.lm_head, c, D, V);
        be->scatter_add_rows(be, dhidden, dh, rows, c, D);
    }
    return be->sync(be, err);
}

/* Where an SSCL sequence sits in the combined batch: SSCL sequences are packed several to a row
 * (each its own segment, positions restarting at 0), so short sentences do not pad to T. */
typedef struct {
    long first;    /* index of its first token in the [R * T] batch */
    int len;       /* tokens, EOS included */
    int pool_from; /* first pooled token (mean pooling): the text after the instruction */
} sscl_place;

/* The flat row ranges the SSCL vectors pool, in places[first .. first + n). */
static void pool_ranges(int64_t *start, int64_t *end, const sscl_place *pl, int n,
                        mg_pooling pooling) {
    for (int r = 0; r < n; r++) {
        end[r] = pl[r].first + pl[r].len;
        start[r] = pooling == MG_POOL_LAST ? end[r] - 1 : pl[r].first + pl[r].pool_from;
    }
}

int mg_trainer_check_adapters(const mg_trainer *t, mg_error *err) {
    if (t->model->lora_version != t->lora_version)
        return mg_fail(err, MG_ERR_VALUE,
                       "the model's LoRA adapters were attached, merged or detached while this "
                       "training run was using them; start a new run");
    return MG_OK;
}

int mg_trainer_micro_step(mg_trainer *t, const mg_micro_batch *mb, int train, mg_losses *out,
                          mg_error *err) {
    mg_model *m = t->model;
    const mg_config *c = &m->config;
    memset(out, 0, sizeof(*out));
    if (mg_trainer_check_adapters(t, err) != MG_OK) return err->code;
    const int use_masked = (mb->w_mntp > 0.0f || mb->w_msg > 0.0f) && mb->masked.rows > 0;
    const int use_sscl = mb->w_sscl > 0.0f && mb->sscl_a.rows >= 2;
    if (check_rows(&mb->masked, "masked-view batch", 1, c->vocab_size, err) ||
        check_rows(&mb->sscl_a, "SSCL batch", 1, c->vocab_size, err))
        return err->code;
    if (use_sscl && mb->sscl_b.tokens != NULL) {
        if (mb->sscl_b.rows != mb->sscl_a.rows)
            return mg_fail(err, MG_ERR_VALUE, "SSCL positives: %d rows for %d anchors",
                           mb->sscl_b.rows, mb->sscl_a.rows);
        if (check_rows(&mb->sscl_b, "SSCL positives", 1, c->vocab_size, err)) return err->code;
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

    const mg_backend *be = m->be;
    /* tokens, segments, the two label sets and the gathered labels of one loss */
    int32_t *tokens = mg_alloc((size_t)N * 5, sizeof(int32_t), "training batch", err);
    uint8_t *roles = mg_alloc((size_t)N, 1, "training roles", err);
    int64_t *idx = mg_alloc((size_t)N + 4 * (size_t)Bs, sizeof(int64_t), "loss rows", err);
    int *positions = mg_alloc((size_t)N, sizeof(int), "positions", err);
    /* backend memory: hidden gradients, loss chunk, sentence vectors, InfoNCE scratch, ranges */
    const size_t plan[] = {(size_t)N * D, token_loss_floats(be, D, c->vocab_size, N),
                           ((size_t)Bs * 4 + 1) * D, be->infonce_scratch(be, Bs > 0 ? Bs : 1, D),
                           (size_t)Bs * 8 + 2};
    size_t ws_bytes = 0;
    for (unsigned i = 0; i < sizeof(plan) / sizeof(plan[0]); i++)
        ws_bytes += mg_arena_floats_bytes(plan[i]);
    mg_workspace ws;
    memset(&ws, 0, sizeof(ws));
    ws.be = be;
    float *dhidden = NULL, *loss_buf = NULL, *pooled = NULL, *nce = NULL;
    int64_t *ranges_dev = NULL;
    mg_activations *acts = &t->acts;
    mg_kv_cache cache;
    memset(&cache, 0, sizeof(cache));
    mg_backward_scratch backward;
    memset(&backward, 0, sizeof(backward));
    if (err->code != MG_OK) goto done;
    if (mg_workspace_init(&ws, be, ws_bytes, err) != 0) goto done;
    dhidden = mg_workspace_floats(&ws, plan[0], err);
    loss_buf = mg_workspace_floats(&ws, plan[1], err);
    pooled = mg_workspace_floats(&ws, plan[2], err);
    nce = mg_workspace_floats(&ws, plan[3], err);
    ranges_dev = (int64_t *)mg_workspace_floats(&ws, plan[4], err);
    if (err->code != MG_OK) goto done;
    /* the losses accumulate into their buffers (hidden gradients, InfoNCE scratch) */
    be->zero(be, ws.arena.base, ws.arena.size);
    int32_t *segs = tokens + N, *mntp_lab = segs + N, *msg_lab = mntp_lab + N, *lab = msg_lab + N;
    for (long n = 0; n < N; n++) {
        tokens[n] = 0;
        segs[n] = -1;
        mntp_lab[n] = msg_lab[n] = MG_IGNORE_LABEL;
    }
    for (int r = 0; r < Bm; r++) {
        const int len = mb->masked.lengths[r];
        const long o = (long)r * T;
        mg_masked_view(mb->masked.tokens + (long)r * mb->masked.T, len, &masking, mb->seed,
                       MG_MASK_STREAM(r), tokens + o, roles + o, mntp_lab + o, msg_lab + o);
        for (int i = 0; i < len; i++)
            segs[o + i] = 0;
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
    for (long n = 0; n < N; n++)
        out->tokens += segs[n] >= 0;

    if (mg_activations_init(acts, be, c, m->lora, N, err) != MG_OK) goto done;
    if (mg_kv_cache_init(&cache, be, c, R, T, c->n_layers, err) != MG_OK) goto done;
    mg_segment_positions(positions, segs, R, T);
    const mg_train_pass pass = {acts, train ? t->cfg.resid_dropout : 0.0f,
                                train ? t->cfg.lora_dropout : 0.0f, mb->seed};
    if (mg_model_step_ex(m, &cache, tokens, roles, segs, positions, R, T, NULL, NULL, 0, &pass,
                         err) != MG_OK)
        goto done;
    /* everything left to allocate, before the token losses add the LM head's gradient */
    if (train && mg_backward_scratch_init(&backward, m, R, T, err) != MG_OK) goto done;

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
        for (long i = 0; i < count; i++)
            lab[i] = label_sets[s][idx[i]];
        double sum = 0.0;
        token_loss(t, acts->hidden, dhidden, idx, lab, count,
                   weights[s] * mb->grad_scale / (float)count, train, &sum, loss_buf, err);
        if (err->code != MG_OK) goto done;
        *means[s] = sum / (double)count;
        *counts[s] = count;
    }
    /* SSCL: InfoNCE between the pooled anchor and positive rows */
    if (Bs) {
        float *a = pooled, *b = pooled + (size_t)Bs * D, *da = b + (size_t)Bs * D,
              *db = da + (size_t)Bs * D;
        /* host ranges [start a | start b | end a | end b] after the loss rows in idx */
        int64_t *start = idx + N, *end = start + 2 * (size_t)Bs;
        pool_ranges(start, end, places, 2 * Bs, mb->pooling);
        const int64_t *d_ranges = mg_stage(be, ranges_dev, start, sizeof(int64_t) * 4 * Bs);
        const int64_t *d_start = d_ranges, *d_end = d_ranges + 2 * (size_t)Bs;
        be->range_pool_forward(be, a, acts->hidden, d_start, d_end, 2 * Bs, D, mb->pooling);
        float loss = 0.0f;
        be->infonce(be, &loss, da, db, a, b, Bs, D, t->cfg.temperature, mb->w_sscl * mb->grad_scale,
                    nce);
        out->sscl = loss;
        out->sscl_count = Bs;
        if (train) be->range_pool_backward(be, dhidden, da, d_start, d_end, 2 * Bs, D, mb->pooling);
    }
    if (train)
        mg_model_backward(m, &t->grads, &pass, &cache, dhidden, tokens, roles, segs, R, T,
                          &backward, err);
    be->sync(be, err);
done:
    mg_backward_scratch_release(&backward);
    mg_free(places);
    mg_kv_cache_release(&cache);
    mg_free(tokens);
    mg_free(roles);
    mg_free(idx);
    mg_free(positions);
    if (ws.arena.base) mg_workspace_release(&ws);
    return err->code;
}

int mg_trainer_apply(mg_trainer *t, double *grad_norm, float *lr_used, mg_error *err) {
    if (mg_trainer_check_adapters(t, err) != MG_OK) return err->code;
    if (t->step >= INT_MAX)
        return mg_fail(err, MG_ERR_VALUE, "the trainer has taken %d steps, the most it counts",
                       t->step);
    const size_t n = mg_trainer_numel(t);
    float *grads = mg_trainer_grads(t), *params = mg_trainer_params(t);
    float *m = t->cfg.full_finetune ? t->m_params : t->m_lora;
    float *v = t->cfg.full_finetune ? t->v_params : t->v_lora;
    const mg_backend *be = t->model->be;
    const double norm = sqrt(be->sum_squares(be, grads, (long)n));
    *grad_norm = norm;
    if (!isfinite(norm))
        return mg_fail(err, MG_ERR_VALUE, "gradient norm is not finite at step %d", t->step);
    if (t->cfg.clip_norm > 0.0f) {
        const float f = grad_clip_factor(norm, t->cfg.clip_norm);
        if (f < 1.0f) be->scale(be, grads, f, (long)n);
    }
    const float lr = mg_trainer_lr(&t->cfg, t->step);
    *lr_used = lr;
    be->adamw_update(be, params, grads, m, v, (long)n, lr, t->cfg.beta1, t->cfg.beta2, t->cfg.eps,
                     t->cfg.weight_decay, t->step + 1);
    be->zero(be, grads, sizeof(float) * n);
    /* A step can overflow the weights while its gradient was finite (an absurd lr or weight
     * decay): the next loss would tell, but the last step has no next one, and a checkpoint
     * or a save must not take such weights silently. One pass over what was just written. */
    if (!isfinite(be->sum_squares(be, params, (long)n)))
        return mg_fail(err, MG_ERR_VALUE, "the update of step %d left weights that are not finite",
                       t->step);
    if (be->sync(be, err) != MG_OK) return err->code;
    t->step++;
    return MG_OK;
}
