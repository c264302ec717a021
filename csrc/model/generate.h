/* A decoding session over one model: a key/value cache that keeps every layer, the next-token
 * logits of each row, and the sampler's state. Generation appends one SPAN token per row and
 * step; infilling appends the context once (CONTEXT) and then span tokens at chosen positions.
 * The model is only read, so sessions on one model may run on different threads. */
#ifndef MG_MODEL_GENERATE_H
#define MG_MODEL_GENERATE_H

#include <stdint.h>

#include "../ops/sampling.h"
#include "model.h"

typedef struct {
    const mg_model *model;
    mg_kv_cache cache; /* allocated for cache.capacity tokens per row, grown on demand */
    int max_capacity;  /* tokens per row the session may come to hold */
    int B, V, D;
    sampling_params params;
    uint64_t seed;
    uint8_t *is_eos;     /* [V] a row that samples a token marked here is finished (any number:
                          * Llama 3 lists three, a generation config may list many more) */
    uint64_t draws;      /* samples drawn so far: the step coordinate of the RNG */
    int has_logits;      /* logits hold a prediction for every row */
    float *logits;       /* [B, V] next-token logits of each row (host) */
    float *dev_logits;   /* [B, V] the same in the model's backend memory (= logits on the CPU) */
    int host_stale;      /* logits lag dev_logits (a GPU decoding greedily reads back less) */
    int device_greedy;   /* greedy without penalty on a GPU: choose there (greedy_rows) */
    int32_t *greedy_tok; /* [B] the device's greedy choice of each row, when device_greedy */
    float *greedy_lp;    /* [B] its raw log-probability */
    float *step_logits;  /* [B, V] a step's output, before idle rows are filtered out */
    float *hidden;       /* [B, capacity, D] state of every appended token, or NULL */
    uint8_t *seen;       /* [B, V] tokens the repetition penalty applies to */
    uint8_t *finished;   /* [B] */
    int32_t *pending;    /* [B] sampled tokens not yet appended (generation), -1: none */
    int32_t *next_pos;   /* [B] position after the row's last appended token */
    uint64_t *scratch;   /* [B, SAMPLING_SCRATCH_WORDS(V)] */
    int32_t *step_tok;   /* [B] one-token step buffers */
    int32_t *step_seg;   /* [B] */
    int *step_pos;       /* [B] */
    uint8_t *step_role;  /* [B] */
    float *step_hidden;  /* [B, D] */
} mg_generator;

/* Tokens per row allocated at once: a session of up to this many is allocated whole (a request
 * beyond memory fails here), a longer one starts with this many and doubles as it fills, so a
 * generous limit costs nothing until it is used. */
#define MG_GENERATOR_FIRST_CAPACITY 4096

/* capacity: tokens per row the session may hold; keep_hidden: keep every appended token's
 * final state (needed by mg_generator_logits_at). */
int mg_generator_init(mg_generator *g, const mg_model *m, int B, int capacity, int keep_hidden,
                      const sampling_params *params, uint64_t seed, const int *eos_ids, int n_eos,
                      mg_error *err);
void mg_generator_release(mg_generator *g);

/* Appends tokens[B, T] with their roles, segments (-1: padding) and positions (int32, [B, T]);
 * each row's logits become those of its last token (unless that is padding), seen tokens are
 * recorded for the repetition penalty, and next_pos becomes one past the row's largest position. */
int mg_generator_append(mg_generator *g, const int32_t *tokens, const uint8_t *roles,
                        const int32_t *segments, const int32_t *positions, int T, mg_error *err);

/* The [B, V] next-token logits on the host: read back first where a GPU session decoding
 * greedily left them on the device (the logits field alone may lag there). */
const float *mg_generator_logits(mg_generator *g);

/* Row b's logits become the prediction of the state at cache index index[b] (-1: leave). */
int mg_generator_logits_at(mg_generator *g, const int32_t *index, mg_error *err);

/* Generation step: appends the tokens sampled by the previous step (SPAN, at next_pos; finished
 * rows as padding), then samples each unfinished row's next token into tokens[B] (-1 for
 * finished rows) with its raw log-probability in logprobs[B] (may be NULL). */
int mg_generator_decode_step(mg_generator *g, int32_t *tokens, float *logprobs, mg_error *err);

/* Infilling step: rows with positions[b] >= 0 sample a token and append it as SPAN at that
 * position; other rows get -1 and a padding slot. */
int mg_generator_span_step(mg_generator *g, const int32_t *positions, int32_t *tokens,
                           float *logprobs, mg_error *err);

/* out[b] = log softmax(logits of row b)[tokens[b]] (rows with tokens[b] < 0 get 0). */
int mg_generator_logprob(mg_generator *g, const int32_t *tokens, float *out, mg_error *err);

#endif
