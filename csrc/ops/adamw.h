/* AdamW (Loshchilov & Hutter) as torch.optim.AdamW computes it, and the global gradient norm
 * for clipping. */
#ifndef MG_OPS_ADAMW_H
#define MG_OPS_ADAMW_H

/* One step over n parameters, step >= 1 (1-based, for the bias corrections):
 *   param -= lr wd param                       (decoupled weight decay)
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
 *   param -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps) */
void adamw_update(float *param, const float *grad, float *m, float *v, long n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step);

/* sqrt of the sum of squares over count buffers (bufs[i] of lens[i] floats), accumulated in double
 * over fixed chunks and combined in a fixed order: the same bits for any thread count. */
double grad_global_norm(const float *const *bufs, const long *lens, int count);

/* The factor torch.nn.utils.clip_grad_norm_ scales gradients by:
 * min(1, max_norm / (norm + 1e-6)). */
static inline float grad_clip_factor(double norm, double max_norm) {
    const double f = max_norm / (norm + 1e-6);
    return f < 1.0 ? (float)f : 1.0f;
}

#endif
