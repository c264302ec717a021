/* Architecture description of a decoder: the LLaMA family (Llama 2/3, Mistral, Qwen2, SmolLM)
 * and GPT-2 share one layer shape; these fields select the variant. */
#ifndef MG_MODEL_CONFIG_H
#define MG_MODEL_CONFIG_H

#include "../core/error.h"

typedef enum { MG_ARCH_LLAMA = 0, MG_ARCH_GPT2 = 1 } mg_arch;
typedef enum { MG_ROPE_DEFAULT = 0, MG_ROPE_LINEAR = 1, MG_ROPE_LLAMA3 = 2 } mg_rope_type;

typedef struct {
    mg_arch arch;
    int vocab_size;
    int dim; /* hidden size D */
    int n_layers;
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads (GQA when fewer than n_heads) */
    int head_dim;
    int hidden_dim;    /* MLP inner size F */
    int max_positions; /* learned-position table size (GPT-2); informative for RoPE models */
    float norm_eps;
    /* RoPE (LLaMA family) */
    float rope_theta;
    mg_rope_type rope_type;
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_positions;
    int sliding_window; /* 0: full attention; else sequences longer than this are rejected */
} mg_config;

/* Checks every field for sanity (positive sizes, divisibility, bounded totals). */
int mg_config_validate(const mg_config *c, mg_error *err);

#endif
