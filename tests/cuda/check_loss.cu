/* The CUDA losses (csrc/backend/cuda/loss.cu) against the CPU reference (csrc/ops/loss.c):
 * cross-entropy with ignored rows and odd vocabulary sizes (GPT-2's 50257 among them), and
 * InfoNCE with accumulated gradients, a NULL gradient and a zero vector. One line per case;
 * exit status 1 if any case fails.
 *
 * Losses: relative error of the value, limit 1e-5 (count: exact). Gradients: max |gpu - cpu|
 * over max |cpu| of the gradient (of the part added, where it accumulates), limit 1e-5 for
 * cross-entropy and 1e-4 for InfoNCE (two float32 GEMMs summed in another order); for
 * cross-entropy also the largest error of a single element relative to its own size, so that
 * the tiny softmax probabilities are judged too (limit 1e-4). Ignored rows must come back
 * exactly zero. */
#include <omp.h>

#include <string>

#include "check_common.h"
#include "ops/loss.h"

using check::Dev;
using check::rel_err;

namespace {

int failures = 0;

void report(bool ok, const std::string &name, const char *fmt, double a, double b, double c) {
    std::printf("%-4s %-40s ", ok ? "ok" : "FAIL", name.c_str());
    std::printf(fmt, a, b, c);
    std::printf("\n");
    if (!ok) failures++;
}

/* chunk_rows > 0: pretend the workspace holds only that many per-row losses, so that the rows
 * are processed in several chunks. */
void cross_entropy_case(const std::string &name, long N, int V, float spread, uint64_t seed,
                        const std::vector<long> &ignored, long chunk_rows = 0) {
    check::Rng rng(seed);
    const std::vector<float> logits = rng.vec((size_t)N * V, -spread, spread);
    std::vector<int32_t> labels(N);
    for (long n = 0; n < N; n++)
        labels[n] = rng.below(V);
    for (long n : ignored)
        labels[n] = MG_IGNORE_LABEL;
    long valid = 0;
    for (long n = 0; n < N; n++)
        valid += labels[n] != MG_IGNORE_LABEL;
    const float grad_scale = valid > 0 ? 1.0f / (float)valid : 1.0f;

    std::vector<float> ref = logits;
    double ref_sum = 0.0;
    long ref_count = 0;
    mg_error err;
    mg_error_clear(&err);
    if (cross_entropy_forward_backward(ref.data(), labels.data(), N, V, grad_scale, &ref_sum,
                                       &ref_count, &err) != MG_OK) {
        std::printf("FAIL %s: CPU reference: %s\n", name.c_str(), err.msg);
        failures++;
        return;
    }

    Dev<float> d_logits(logits);
    Dev<int32_t> d_labels(labels);
    double sum = -1.0;
    long count = -1;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(check::backend());
    const size_t workspace_bytes = ctx->workspace_bytes;
    if (chunk_rows > 0) ctx->workspace_bytes = 8 * sizeof(double) + chunk_rows * sizeof(double);
    cuda_cross_entropy(check::backend(), d_logits.p, d_labels.p, N, V, grad_scale, &sum, &count);
    check::sync(name.c_str());
    ctx->workspace_bytes = workspace_bytes;
    const std::vector<float> grad = d_logits.get();

    const double e_loss = std::fabs(sum - ref_sum) / std::fmax(std::fabs(ref_sum), 1e-30);
    const double e_grad = rel_err(grad, ref);
    double e_elem = 0.0;
    const double floor = 1e-30;
    for (size_t i = 0; i < ref.size(); i++)
        e_elem = std::fmax(e_elem, std::fabs((double)grad[i] - ref[i]) /
                                       std::fmax(std::fabs((double)ref[i]), floor));
    bool ignored_zero = true;
    for (long n : ignored)
        for (int j = 0; j < V; j++)
            ignored_zero &= grad[(size_t)n * V + j] == 0.0f;
    const bool ok =
        e_loss <= 1e-5 && e_grad <= 1e-5 && e_elem <= 1e-4 && count == ref_count && ignored_zero;
    report(ok,
           "cross-entropy " + name + " N=" + std::to_string(N) + " V=" + std::to_string(V) +
               (count == ref_count ? "" : " COUNT") + (ignored_zero ? "" : " IGNORED-NOT-0"),
           "loss %.2e  grad %.2e  grad/elem %.2e", e_loss, e_grad, e_elem);
}

void infonce_case(const std::string &name, int n, int D, float temperature, uint64_t seed,
                  bool zero_row, bool null_da) {
    check::Rng rng(seed);
    std::vector<float> a = rng.vec((size_t)n * D, -1.0f, 1.0f);
    /* positives loosely related to their anchors: the loss is neither log n nor saturated (a
     * saturated softmax leaves gradients below float resolution, and nothing to compare) */
    std::vector<float> b(a.size());
    for (size_t i = 0; i < a.size(); i++)
        b[i] = a[i] + rng.uniform(-2.0f, 2.0f);
    if (zero_row)
        for (int d = 0; d < D; d++)
            a[(size_t)(n / 2) * D + d] = 0.0f;
    const std::vector<float> da0 = rng.vec(a.size(), -0.1f, 0.1f),
                             db0 = rng.vec(a.size(), -0.1f, 0.1f);
    const float grad_scale = 0.75f;

    std::vector<float> scratch(INFONCE_SCRATCH(n, D));
    std::vector<float> da_ref = da0, db_ref = db0;
    float loss_ref = 0.0f;
    infonce_forward_backward(&loss_ref, null_da ? nullptr : da_ref.data(), db_ref.data(), a.data(),
                             b.data(), n, D, temperature, grad_scale, scratch.data());

    const mg_backend *be = check::backend();
    Dev<float> d_a(a), d_b(b), d_da(da0), d_db(db0);
    Dev<float> d_scratch(std::vector<float>(cuda_infonce_scratch(be, n, D), NAN));
    float loss = -1.0f;
    cuda_infonce(be, &loss, null_da ? nullptr : d_da.p, d_db.p, d_a.p, d_b.p, n, D, temperature,
                 grad_scale, d_scratch.p);
    check::sync(name.c_str());
    const std::vector<float> da = d_da.get(), db = d_db.get();

    auto added_scale = [](const std::vector<float> &want, const std::vector<float> &init) {
        double m = 0.0;
        for (size_t i = 0; i < want.size(); i++)
            m = std::fmax(m, std::fabs((double)want[i] - init[i]));
        return m;
    };
    const double e_loss =
        std::fabs((double)loss - loss_ref) / std::fmax(std::fabs(loss_ref), 1e-30);
    const double e_da =
        null_da ? (da == da0 ? 0.0 : INFINITY) : rel_err(da, da_ref, added_scale(da_ref, da0));
    const double e_db = rel_err(db, db_ref, added_scale(db_ref, db0));
    /* a gradient too small to change the accumulator would pass vacuously */
    const double gmag = added_scale(db_ref, db0) / check::max_abs(db0);
    const bool ok = e_loss <= 1e-5 && e_da <= 1e-4 && e_db <= 1e-4 && gmag > 1e-3;
    report(ok,
           "infonce " + name + " n=" + std::to_string(n) + " D=" + std::to_string(D) +
               " loss=" + std::to_string(loss_ref),
           "loss %.2e  da %.2e  db %.2e", e_loss, e_da, e_db);
}

} // namespace

int main() {
    cross_entropy_case("gpt2 vocab, 2 ignored", 5, 50257, 4.0f, 1, {1, 3});
    cross_entropy_case("odd small vocab", 9, 7, 3.0f, 2, {0});
    cross_entropy_case("many rows", 700, 33, 6.0f, 3, {5, 6, 7, 699});
    cross_entropy_case("many rows in chunks of 128", 700, 33, 6.0f, 3, {5, 6, 7, 699}, 128);
    cross_entropy_case("peaked logits", 4, 1001, 40.0f, 4, {});
    cross_entropy_case("every row ignored", 3, 100, 1.0f, 5, {0, 1, 2});
    infonce_case("", 5, 33, 0.2f, 6, false, false);
    infonce_case("", 64, 128, 0.1f, 7, false, false);
    infonce_case("da = NULL", 17, 40, 0.2f, 8, false, true);
    infonce_case("zero vector", 9, 24, 0.2f, 9, true, false);
    infonce_case("wide", 12, 1030, 0.3f, 10, false, false);
    if (failures) {
        std::printf("check_loss: %d cases failed\n", failures);
        return 1;
    }
    std::printf("check_loss: all cases passed\n");
    return 0;
}
