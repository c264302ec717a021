#include "config.h"

#include <math.h>

int mg_config_validate(const mg_config *c, mg_error *err) {
    if (c->arch != MG_ARCH_LLAMA && c->arch != MG_ARCH_GPT2)
        return mg_fail(err, MG_ERR_UNSUPPORTED, "unsupported architecture code %d", (int)c->arch);
    const struct {
        const char *name;
        int value;
        int max;
    } sizes[] = {
        {"vocab_size", c->vocab_size, 1 << 22},
        {"hidden_size", c->dim, 1 << 16},
        {"num_layers", c->n_layers, 1024},
        {"num_heads", c->n_heads, 1024},
        {"num_kv_heads", c->n_kv_heads, 1024},
        {"head_dim", c->head_dim, 1024},
        {"intermediate_size", c->hidden_dim, 1 << 18},
    };
    for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        if (sizes[i].value <= 0 || sizes[i].value > sizes[i].max)
            return mg_fail(err, MG_ERR_VALUE, "config %s=%d is out of range (1..%d)", sizes[i].name,
                           sizes[i].value, sizes[i].max);
    if (c->n_heads % c->n_kv_heads != 0)
        return mg_fail(err, MG_ERR_VALUE, "num_heads=%d is not a multiple of num_kv_heads=%d",
                       c->n_heads, c->n_kv_heads);
    if (c->arch == MG_ARCH_LLAMA && c->head_dim % 2 != 0)
        return mg_fail(err, MG_ERR_VALUE, "head_dim=%d must be even for rotary embeddings",
                       c->head_dim);
    if (c->arch == MG_ARCH_GPT2 && (c->max_positions <= 0 || c->max_positions > (1 << 20)))
        return mg_fail(err, MG_ERR_VALUE, "config max_positions=%d is out of range",
                       c->max_positions);
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        return mg_fail(err, MG_ERR_VALUE, "config norm_eps=%g must be positive", c->norm_eps);
    if (c->arch == MG_ARCH_LLAMA) {
        if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
            return mg_fail(err, MG_ERR_VALUE, "config rope_theta=%g must be positive",
                           c->rope_theta);
        if (c->rope_type != MG_ROPE_DEFAULT && !(c->rope_factor > 0.0f))
            return mg_fail(err, MG_ERR_VALUE, "rope_scaling factor=%g must be positive",
                           c->rope_factor);
        if (c->rope_type == MG_ROPE_LLAMA3 &&
            (!(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
             !(c->rope_low_freq_factor > 0.0f) || c->rope_original_max_positions <= 0))
            return mg_fail(err, MG_ERR_VALUE,
                           "llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and "
                           "original_max_position_embeddings > 0");
    }
    if (c->sliding_window < 0)
        return mg_fail(err, MG_ERR_VALUE, "sliding_window=%d must be >= 0", c->sliding_window);
    return MG_OK;
}
