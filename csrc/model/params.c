#include "params.h"

#include <stdio.h>
#include <string.h>

#include "../core/alloc.h"

typedef enum { SLOT_REQUIRED, SLOT_OPTIONAL } slot_need;

typedef struct {
    char name[MG_PARAM_NAME_MAX];
    int ndim;
    int64_t shape[2];
    slot_need need;
    float **dest;
    int present;
} slot_plan;

#define MG_MAX_SLOTS_PER_LAYER 18

static void plan_add(slot_plan *plan, int *n, const char *name, int ndim, int64_t d0, int64_t d1,
                     slot_need need, float **dest) {
    slot_plan *s = &plan[(*n)++];
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->need = need;
    s->dest = dest;
    s->present = 0;
}

/* Builds the list of every slot the architecture can hold. */
static int plan_slots(slot_plan *plan, mg_params *p, const mg_config *c) {
    int n = 0;
    const int64_t D = c->dim, V = c->vocab_size, F = c->hidden_dim;
    const int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    const int gpt2 = c->arch == MG_ARCH_GPT2;
    const slot_need gpt2_req = gpt2 ? SLOT_REQUIRED : SLOT_OPTIONAL;
    plan_add(plan, &n, "tok_embeddings", 2, V, D, SLOT_REQUIRED, &p->tok_embeddings);
    if (gpt2)
        plan_add(plan, &n, "pos_embeddings", 2, c->max_positions, D, SLOT_REQUIRED,
                 &p->pos_embeddings);
    for (int l = 0; l < c->n_layers; l++) {
        mg_layer_params *L = &p->layers[l];
        char nm[MG_PARAM_NAME_MAX];
#define LAYER_SLOT(suffix, nd, a, b, need, field)                                                  \
    do {                                                                                           \
        snprintf(nm, sizeof(nm), "layers.%d." suffix, l);                                          \
        plan_add(plan, &n, nm, nd, a, b, need, &L->field);                                         \
    } while (0)
        LAYER_SLOT("attn_norm.weight", 1, D, 0, SLOT_REQUIRED, attn_norm_w);
        if (gpt2) LAYER_SLOT("attn_norm.bias", 1, D, 0, SLOT_REQUIRED, attn_norm_b);
        /* q, k, v weights adjacent: one [QD + 2 KD, D] matrix for a single fused GEMM */
        LAYER_SLOT("wq.weight", 2, QD, D, SLOT_REQUIRED, wq);
        LAYER_SLOT("wk.weight", 2, KD, D, SLOT_REQUIRED, wk);
        LAYER_SLOT("wv.weight", 2, KD, D, SLOT_REQUIRED, wv);
        LAYER_SLOT("wq.bias", 1, QD, 0, gpt2_req, bq);
        LAYER_SLOT("wk.bias", 1, KD, 0, gpt2_req, bk);
        LAYER_SLOT("wv.bias", 1, KD, 0, gpt2_req, bv);
        LAYER_SLOT("wo.weight", 2, D, QD, SLOT_REQUIRED, wo);
        LAYER_SLOT("wo.bias", 1, D, 0, gpt2_req, bo);
        LAYER_SLOT("mlp_norm.weight", 1, D, 0, SLOT_REQUIRED, mlp_norm_w);
        if (gpt2) LAYER_SLOT("mlp_norm.bias", 1, D, 0, SLOT_REQUIRED, mlp_norm_b);
        if (!gpt2) {
            LAYER_SLOT("w_gate.weight", 2, F, D, SLOT_REQUIRED, w_gate);
            LAYER_SLOT("w_gate.bias", 1, F, 0, SLOT_OPTIONAL, b_gate);
        }
        LAYER_SLOT("w_up.weight", 2, F, D, SLOT_REQUIRED, w_up);
        LAYER_SLOT("w_up.bias", 1, F, 0, gpt2_req, b_up);
        LAYER_SLOT("w_down.weight", 2, D, F, SLOT_REQUIRED, w_down);
        LAYER_SLOT("w_down.bias", 1, D, 0, gpt2_req, b_down);
#undef LAYER_SLOT
    }
    plan_add(plan, &n, "final_norm.weight", 1, D, 0, SLOT_REQUIRED, &p->final_norm_w);
    if (gpt2) plan_add(plan, &n, "final_norm.bias", 1, D, 0, SLOT_REQUIRED, &p->final_norm_b);
    plan_add(plan, &n, "lm_head.weight", 2, V, D, SLOT_OPTIONAL, &p->lm_head);
    return n;
}

static int shape_matches(const slot_plan *s, const mg_tensor *t) {
    /* a [n] vector also accepted as [1, n] or [n, 1] would hide loader bugs: demand exact */
    if (t->ndim != s->ndim) return 0;
    for (int i = 0; i < s->ndim; i++)
        if (t->shape[i] != s->shape[i]) return 0;
    return 1;
}

static void format_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

int mg_params_create(mg_params *p, const mg_config *c, const mg_named_tensor *tensors, int count,
                     mg_error *err) {
    memset(p, 0, sizeof(*p));
    if (mg_config_validate(c, err) != MG_OK) return err->code;
    int max_slots = 8 + MG_MAX_SLOTS_PER_LAYER * c->n_layers;
    slot_plan *plan = mg_alloc((size_t)max_slots, sizeof(slot_plan), "parameter plan", err);
    p->layers = mg_alloc((size_t)c->n_layers, sizeof(mg_layer_params), "layer table", err);
    if (!plan || !p->layers) goto fail;
    int n = plan_slots(plan, p, c);

    for (int i = 0; i < count; i++) {
        const char *name = tensors[i].name;
        int found = -1;
        for (int s = 0; s < n; s++)
            if (strcmp(plan[s].name, name) == 0) {
                found = s;
                break;
            }
        if (found < 0) {
            mg_fail(err, MG_ERR_VALUE, "unexpected parameter '%s' for this architecture", name);
            goto fail;
        }
        if (plan[found].present) {
            mg_fail(err, MG_ERR_VALUE, "parameter '%s' given twice", name);
            goto fail;
        }
        if (!shape_matches(&plan[found], &tensors[i].tensor)) {
            char want[96], got[96];
            format_shape(want, sizeof(want), plan[found].ndim, plan[found].shape);
            format_shape(got, sizeof(got), tensors[i].tensor.ndim, tensors[i].tensor.shape);
            mg_fail(err, MG_ERR_VALUE, "parameter '%s' has shape %s, expected %s", name, got, want);
            goto fail;
        }
        plan[found].present = 1;
    }

    size_t total = 0;
    int kept = 0;
    for (int s = 0; s < n; s++) {
        if (!plan[s].present) {
            if (plan[s].need == SLOT_REQUIRED) {
                mg_fail(err, MG_ERR_VALUE, "missing parameter '%s'", plan[s].name);
                goto fail;
            }
            continue;
        }
        size_t numel =
            (size_t)plan[s].shape[0] * (size_t)(plan[s].ndim == 2 ? plan[s].shape[1] : 1);
        total += (numel + 15) & ~(size_t)15; /* 64-byte aligned tensors */
        kept++;
    }
    p->block = mg_alloc(total, sizeof(float), "parameters", err);
    p->slots = mg_alloc((size_t)kept, sizeof(mg_param_slot), "parameter slots", err);
    if (!p->block || !p->slots) goto fail;
    p->numel = total;

    size_t offset = 0;
    for (int s = 0; s < n; s++) {
        if (!plan[s].present) continue;
        mg_param_slot *slot = &p->slots[p->n_slots++];
        memcpy(slot->name, plan[s].name, sizeof(slot->name));
        slot->ndim = plan[s].ndim;
        slot->shape[0] = plan[s].shape[0];
        slot->shape[1] = plan[s].ndim == 2 ? plan[s].shape[1] : 1;
        slot->numel = (size_t)slot->shape[0] * (size_t)slot->shape[1];
        slot->offset = offset;
        *plan[s].dest = p->block + offset;
        offset += (slot->numel + 15) & ~(size_t)15;
        for (int i = 0; i < count; i++)
            if (strcmp(tensors[i].name, slot->name) == 0) {
                memcpy(p->block + slot->offset, tensors[i].tensor.data,
                       slot->numel * sizeof(float));
                break;
            }
    }
    if (p->lm_head == NULL) p->lm_head = p->tok_embeddings; /* tied head */
    mg_free(plan);
    return MG_OK;
fail:
    mg_free(plan);
    mg_params_release(p);
    return err->code;
}

void mg_params_release(mg_params *p) {
    mg_free(p->block);
    mg_free(p->slots);
    mg_free(p->layers);
    memset(p, 0, sizeof(*p));
}
