#include "objectives.h"

#include <string.h>

#include "../core/rng.h"
#include "../ops/attention.h"
#include "../ops/loss.h"

/* Draw indices within a sequence's stream, so each decision has its own fixed draw. */
enum { DRAW_ALL_SPAN = 0, DRAW_N_SPANS = 1, DRAW_SPANS = 8, DRAW_MASK = 1024 };

void mg_masked_view(const int32_t *tokens, int len, const mg_masking_config *cfg, uint64_t seed,
                    uint64_t stream, int32_t *tok_out, uint8_t *roles_out, int32_t *mntp_label,
                    int32_t *msg_label) {
    memcpy(tok_out, tokens, sizeof(int32_t) * (size_t)len);
    for (int i = 0; i < len; i++) {
        roles_out[i] = MG_ROLE_CONTEXT;
        mntp_label[i] = MG_IGNORE_LABEL;
        msg_label[i] = MG_IGNORE_LABEL;
    }
    if (len < 2) return;
    if (cfg->use_spans && mg_rng_uniform(seed, stream, DRAW_ALL_SPAN) < cfg->all_span_frac) {
        for (int i = 0; i < len; i++)
            roles_out[i] = MG_ROLE_SPAN;
        for (int i = 1; i < len; i++)
            msg_label[i - 1] = tokens[i];
        return;
    }
    if (cfg->use_spans && cfg->spans_max > 0) {
        const int n_spans = cfg->spans_min + (int)mg_rng_uniform_int(
                                                 seed, stream, DRAW_N_SPANS,
                                                 (uint32_t)(cfg->spans_max - cfg->spans_min + 1));
        int budget = (int)(cfg->span_max_frac * (float)len);
        uint64_t draw = DRAW_SPANS;
        for (int s = 0; s < n_spans && budget > 0; s++) {
            int L = cfg->span_len_min +
                    (int)mg_rng_uniform_int(seed, stream, draw++,
                                            (uint32_t)(cfg->span_len_max - cfg->span_len_min + 1));
            if (L > budget) L = budget;
            if (L > len - 1) L = len - 1;
            if (L < 1) break;
            /* a few tries for a place that overlaps no span and keeps a context token before
             * it and after it: a span touching an earlier one would merge with it, and that
             * span's first token would be predicted from a span state */
            for (int attempt = 0; attempt < 8; attempt++) {
                const int start =
                    1 + (int)mg_rng_uniform_int(seed, stream, draw++, (uint32_t)(len - L));
                int free = roles_out[start - 1] == MG_ROLE_CONTEXT &&
                           (start + L == len || roles_out[start + L] == MG_ROLE_CONTEXT);
                for (int i = start; i < start + L && free; i++)
                    free = roles_out[i] == MG_ROLE_CONTEXT;
                if (!free) continue;
                for (int i = start; i < start + L; i++) {
                    roles_out[i] = MG_ROLE_SPAN;
                    msg_label[i - 1] = tokens[i];
                }
                budget -= L;
                break;
            }
        }
    }
    for (int i = 1; i < len; i++) {
        if (roles_out[i] != MG_ROLE_CONTEXT || roles_out[i - 1] != MG_ROLE_CONTEXT) continue;
        const uint64_t base = DRAW_MASK + 3 * (uint64_t)i;
        if (mg_rng_uniform(seed, stream, base) >= cfg->mask_rate) continue;
        mntp_label[i - 1] = tokens[i];
        const float u = mg_rng_uniform(seed, stream, base + 1);
        if (u < cfg->mask_token_frac)
            tok_out[i] = cfg->mask_token_id;
        else if (u < cfg->mask_token_frac + cfg->random_token_frac)
            tok_out[i] =
                (int32_t)mg_rng_uniform_int(seed, stream, base + 2, (uint32_t)cfg->vocab_size);
    }
}
