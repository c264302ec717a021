/* MAGNET's self-supervised views (docs/method.md, The objectives), built in C from token ids:
 * the masked view carries MNTP (masked next-token prediction on CONTEXT tokens) and MSG
 * (missing-span generation on SPAN tokens); labels follow the next-token convention, so the
 * label stored at position i-1 is the original token at position i. */
#ifndef MG_MODEL_OBJECTIVES_H
#define MG_MODEL_OBJECTIVES_H

#include <stdint.h>

typedef struct {
    float mask_rate;         /* share of eligible context tokens chosen for MNTP (0.2) */
    float mask_token_frac;   /* of those, replaced by the mask token (0.8) */
    float random_token_frac; /* of those, replaced by a uniform random token (0.1); rest kept */
    int mask_token_id;
    int vocab_size;
    int use_spans;                  /* sample SPAN regions (MSG); 0 gives an all-CONTEXT view */
    int spans_min, spans_max;       /* spans per sequence (1..3), at most MG_MAX_SPANS */
    int span_len_min, span_len_max; /* span length, uniform (8..32) */
    float span_max_frac; /* all spans together at most this share of the sequence (0.3) */
    float all_span_frac; /* share of sequences made all-SPAN: plain next-token LM (0.25) */
} mg_masking_config;

/* The most spans a sequence may ask for: each one draws up to 8 places, found or not, so an
 * unbounded count would spin long after the sequence is full. */
#define MG_MAX_SPANS 1024

/* The stream of row r's masked view in a training micro step: apart from the dropout streams
 * (MG_DROP_STREAM_*, below 2**40), so masking and dropout never share random numbers. */
#define MG_MASK_STREAM(r) (((uint64_t)1 << 48) + (uint64_t)(r))

/* The masked view of tokens[len] under draws from (seed, stream): writes tok_out, roles_out and
 * the two label arrays (-100 where no loss), all of length len. Position 0 always stays
 * CONTEXT and unmasked (it is the BOS or the first token, and a span's first token needs a
 * context token before it). An MNTP position i needs CONTEXT at i - 1 too, so every MNTP label
 * is predicted from a context state. */
void mg_masked_view(const int32_t *tokens, int len, const mg_masking_config *cfg, uint64_t seed,
                    uint64_t stream, int32_t *tok_out, uint8_t *roles_out, int32_t *mntp_label,
                    int32_t *msg_label);

#endif
