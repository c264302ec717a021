/* Next-token choice from one row of logits: Hugging Face's logits processors (repetition
 * penalty, temperature, top-k, top-p, min-p, in that order) and greedy or seeded sampling. */
#ifndef MG_OPS_SAMPLING_H
#define MG_OPS_SAMPLING_H

#include <stdint.h>

typedef struct {
    int do_sample;             /* 0: greedy argmax (after the repetition penalty) */
    double temperature;        /* > 0 when sampling (any double: scaling cannot overflow) */
    int top_k;                 /* 0 or >= V: off */
    double top_p;              /* (0, 1]; 1: off */
    double min_p;              /* [0, 1]; 0: off */
    double repetition_penalty; /* > 0; 1: off */
} sampling_params;

/* A uniform double in [0, 1) from splitmix64 of (seed, step, row): counter-based, so a draw
 * depends on nothing but its coordinates. */
double sampling_uniform(uint64_t seed, uint64_t step, uint64_t row);

/* 64-bit words of scratch sampling_choose needs per row: V floats, V ints and V sort keys. */
#define SAMPLING_SCRATCH_WORDS(V) (((size_t)(V) + 1) / 2 * 2 + (size_t)(V))

/* Chooses a token from logits[V] (not modified). seen[V] (may be NULL) flags the tokens that the
 * repetition penalty applies to: a seen logit x becomes x / penalty when x > 0, else x * penalty
 * (Hugging Face's RepetitionPenaltyLogitsProcessor). The temperature scales (x - max) / t in
 * double, so a tiny temperature tends to the greedy choice (ties shared) instead of overflowing.
 * u is the uniform draw used when sampling.
 * Writes the log-probability of the chosen token under the raw (unprocessed) logits to
 * *raw_logprob when not NULL. scratch: SAMPLING_SCRATCH_WORDS(V) words. Ties go to the lower
 * token id (as torch.argmax). NaN logits are never chosen, greedy or sampled; returns -1 when
 * sampling finds no logit that is not NaN or -inf (the greedy choice is then token 0). */
int sampling_choose(const float *logits, int V, const uint8_t *seen, const sampling_params *p,
                    double u, uint64_t *scratch, float *raw_logprob);

/* log softmax(logits)[token] for one row of V logits, NaN logits left out of the sum. */
float sampling_logprob(const float *logits, int V, int token);

/* Greedy choice of each row of logits[rows, V] (the first index of the largest logit that is not
 * NaN, 0 when all are; as sampling_choose without sampling or penalty) and its sampling_logprob. */
void sampling_greedy_rows(const float *logits, int rows, int V, int32_t *tokens, float *logprobs);

#endif
