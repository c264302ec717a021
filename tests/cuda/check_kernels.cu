/* The CUDA backend's layer, optimizer and data-movement entries against the CPU: for every entry
 * of norm.cu, rope.cu, activation.cu, embedding.cu, dropout.cu, adamw.cu, rows.cu and pooling.cu,
 * random inputs in several shapes (odd sizes, one row, rows not a multiple of a warp, padding
 * rows, misaligned pointers for the vector paths), the CPU reference (the csrc/ops function, or
 * a plain loop for the entries without one) and the CUDA entry, called through the op table of
 * mg_backend_cuda_create, on the same inputs. One line per case with the measured error; exit
 * status 1 if any case fails. Some cases shrink the backend's workspace_bytes for a moment to
 * reach the entries' small-workspace paths.
 *
 * Error of a case: max |gpu - cpu| / max |cpu| over the output (relative to the output's scale,
 * so that cancellation near zero does not read as a large error); the bound is 1e-5. Entries
 * whose arithmetic is the CPU's, operation for operation, are compared bit for bit ("exact"):
 * dropout masks, embedding sums (added in the CPU's row order), data movement, pooled means.
 * The entries built on reductions are also run twice and must give the same bits twice. */

/* The CPU references, with C linkage (these headers have no C++ guards of their own; included
 * before backend.h, whose includes their guards then skip). */
extern "C" {
#include "core/rng.h"
#include "ops/activation.h"
#include "ops/adamw.h"
#include "ops/dropout.h"
#include "ops/embedding.h"
#include "ops/norm.h"
#include "ops/pooling.h"
#include "ops/rope.h"
}

#include "backend/cuda/cuda_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#define TOLERANCE 1e-5

static int failures = 0;
static int cases = 0;
static const mg_backend *be = NULL;

/* ---------------- inputs ---------------- */

static uint64_t rng_state = 0x1234567887654321ULL;

static double uniform01(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static std::vector<float> random_floats(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(lo + (hi - lo) * uniform01());
    return v;
}

static int random_int(int n) {
    return (int)(uniform01() * n) % n;
}

/* ---------------- device buffers ---------------- */

/* A device copy of a host vector; `pad` extra leading elements let a case pass a pointer that is
 * not 16-byte aligned (base + pad). */
template <typename T> struct Dev {
    T *base = NULL;
    T *p = NULL;
    size_t n = 0;
    Dev() = default;
    explicit Dev(const std::vector<T> &h, size_t pad = 0) {
        n = h.size();
        const size_t bytes = sizeof(T) * (n + pad) + 16;
        if (cudaMalloc((void **)&base, bytes) != cudaSuccess) {
            fprintf(stderr, "cudaMalloc of %zu bytes failed\n", bytes);
            exit(2);
        }
        p = base + pad;
        /* cudaMemcpy runs on the legacy default stream, which the backend's non-blocking stream
         * does not wait for, and a pageable upload may return before its DMA lands: wait for the
         * whole device so that the kernel under test reads the uploaded values. */
        if (n && (cudaMemcpy(p, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice) != cudaSuccess ||
                  cudaDeviceSynchronize() != cudaSuccess)) {
            fprintf(stderr, "upload of %zu bytes failed\n", sizeof(T) * n);
            exit(2);
        }
    }
    Dev(const Dev &) = delete;
    Dev &operator=(const Dev &) = delete;
    ~Dev() {
        if (base) cudaFree(base);
    }
    std::vector<T> get() const {
        std::vector<T> h(n);
        if (n) cudaMemcpy(h.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost);
        return h;
    }
};

/* Waits for the queued kernels and fails the case if any launch or kernel failed. */
static bool settle(const char *what) {
    mg_error err;
    mg_error_clear(&err);
    if (be->sync(be, &err) != 0) {
        printf("FAIL %-44s the GPU reported: %s\n", what, err.msg);
        failures++;
        return false;
    }
    return true;
}

/* ---------------- comparisons ---------------- */

static double relative_error(const std::vector<float> &got, const std::vector<float> &want) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < want.size(); i++) {
        const double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= diff)) diff = d; /* NaN counts as the largest difference */
        if (fabs((double)want[i]) > scale) scale = fabs((double)want[i]);
    }
    return scale > 0.0 ? diff / scale : diff;
}

/* Reports one case: `err` against the tolerance, or bitwise equality when `exact`. */
static void report(const char *op, const char *shape, double err, bool exact, bool equal) {
    cases++;
    const bool ok = exact ? equal : err <= TOLERANCE;
    if (!ok) failures++;
    if (exact)
        printf("%s %-28s %-30s %s (max rel err %.3g)\n", ok ? "ok  " : "FAIL", op, shape,
               equal ? "bit-exact" : "NOT bit-exact", err);
    else
        printf("%s %-28s %-30s max rel err %.3g\n", ok ? "ok  " : "FAIL", op, shape, err);
}

/* Compares several outputs of one case (all must pass); returns the largest error. */
static void compare(const char *op, const char *shape, bool exact,
                    std::initializer_list<std::pair<std::vector<float>, std::vector<float>>> outs) {
    double err = 0.0;
    bool equal = true;
    for (const auto &o : outs) {
        const double e = relative_error(o.first, o.second);
        if (!(e <= err)) err = e;
        if (o.first.size() != o.second.size() ||
            memcmp(o.first.data(), o.second.data(), sizeof(float) * o.first.size()) != 0)
            equal = false;
    }
    report(op, shape, err, exact, equal);
}

static void determinism(const char *op, const char *shape, const std::vector<float> &a,
                        const std::vector<float> &b) {
    const bool same =
        a.size() == b.size() && memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
    cases++;
    if (!same) failures++;
    printf("%s %-28s %-30s %s\n", same ? "ok  " : "FAIL", op, shape,
           same ? "same bits on a second run" : "DIFFERENT bits on a second run");
}

/* ---------------- norms ---------------- */

static void check_norms(int N, int D) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d D=%d", N, D);
    const float eps = 1e-5f;
    const auto x = random_floats((size_t)N * D, -2.0f, 2.0f), w = random_floats(D, 0.5f, 1.5f),
               b = random_floats(D), dy = random_floats((size_t)N * D);
    Dev<float> dx_(x), dw_(w), db_(b), ddy(dy);

    { /* RMSNorm forward */
        std::vector<float> want((size_t)N * D);
        rmsnorm_forward(want.data(), x.data(), w.data(), N, D, eps);
        Dev<float> out(std::vector<float>((size_t)N * D));
        be->rmsnorm_forward(be, out.p, dx_.p, dw_.p, N, D, eps);
        if (settle("rmsnorm_forward"))
            compare("rmsnorm_forward", shape, false, {{out.get(), want}});
    }
    { /* LayerNorm forward */
        std::vector<float> want((size_t)N * D);
        layernorm_forward(want.data(), x.data(), w.data(), b.data(), N, D, eps);
        Dev<float> out(std::vector<float>((size_t)N * D));
        be->layernorm_forward(be, out.p, dx_.p, dw_.p, db_.p, N, D, eps);
        if (settle("layernorm_forward"))
            compare("layernorm_forward", shape, false, {{out.get(), want}});
    }
    /* Backwards: every combination of present gradients, accumulating onto random values. */
    for (int mask = 1; mask < 4; mask++) {
        const bool with_dinp = mask & 1, with_dw = mask & 2;
        char name[64];
        snprintf(name, sizeof name, "rmsnorm_backward%s%s", with_dinp ? "" : " -dx",
                 with_dw ? "" : " -dw");
        const auto dinp0 = random_floats((size_t)N * D), dw0 = random_floats(D);
        std::vector<float> dinp = dinp0, dwt = dw0;
        rmsnorm_backward(with_dinp ? dinp.data() : NULL, with_dw ? dwt.data() : NULL, dy.data(),
                         x.data(), w.data(), N, D, eps);
        std::vector<float> runs[2][2];
        for (int run = 0; run < 2; run++) {
            Dev<float> gdinp(dinp0), gdw(dw0);
            be->rmsnorm_backward(be, with_dinp ? gdinp.p : NULL, with_dw ? gdw.p : NULL, ddy.p,
                                 dx_.p, dw_.p, N, D, eps);
            if (!settle(name)) return;
            runs[run][0] = gdinp.get();
            runs[run][1] = gdw.get();
        }
        compare(name, shape, false, {{runs[0][0], dinp}, {runs[0][1], dwt}});
        if (with_dw) determinism(name, shape, runs[0][1], runs[1][1]);
    }
    for (int mask = 1; mask < 8; mask++) {
        const bool with_dinp = mask & 1, with_dw = mask & 2, with_db = mask & 4;
        char name[64];
        snprintf(name, sizeof name, "layernorm_backward%s%s%s", with_dinp ? "" : " -dx",
                 with_dw ? "" : " -dw", with_db ? "" : " -db");
        const auto dinp0 = random_floats((size_t)N * D), dw0 = random_floats(D),
                   db0 = random_floats(D);
        std::vector<float> dinp = dinp0, dwt = dw0, dbt = db0;
        layernorm_backward(with_dinp ? dinp.data() : NULL, with_dw ? dwt.data() : NULL,
                           with_db ? dbt.data() : NULL, dy.data(), x.data(), w.data(), N, D, eps);
        std::vector<float> runs[2][3];
        for (int run = 0; run < 2; run++) {
            Dev<float> gdinp(dinp0), gdw(dw0), gdb(db0);
            be->layernorm_backward(be, with_dinp ? gdinp.p : NULL, with_dw ? gdw.p : NULL,
                                   with_db ? gdb.p : NULL, ddy.p, dx_.p, dw_.p, N, D, eps);
            if (!settle(name)) return;
            runs[run][0] = gdinp.get();
            runs[run][1] = gdw.get();
            runs[run][2] = gdb.get();
        }
        compare(name, shape, false, {{runs[0][0], dinp}, {runs[0][1], dwt}, {runs[0][2], dbt}});
        if (with_dw || with_db) {
            determinism(name, shape, runs[0][1], runs[1][1]);
            determinism(name, shape, runs[0][2], runs[1][2]);
        }
    }
}

/* ---------------- rope ---------------- */

static void check_rope(int N, int H, int hd, int max_pos) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d H=%d hd=%d pos<%d", N, H, hd, max_pos);
    const int half = hd / 2;
    std::vector<float> inv_freq(half);
    for (int k = 0; k < half; k++)
        inv_freq[k] = (float)pow(10000.0, -2.0 * k / hd);
    std::vector<int> pos(N);
    for (int n = 0; n < N; n++)
        pos[n] = random_int(max_pos);
    const auto x = random_floats((size_t)N * H * hd);
    Dev<float> gf(inv_freq);
    Dev<int> gpos(pos);
    for (int backward = 0; backward < 2; backward++) {
        std::vector<float> want = x;
        Dev<float> gx(x);
        if (backward) {
            rope_backward(want.data(), pos.data(), inv_freq.data(), N, H, hd);
            be->rope_backward(be, gx.p, gpos.p, gf.p, N, H, hd);
        } else {
            rope_forward(want.data(), pos.data(), inv_freq.data(), N, H, hd);
            be->rope_forward(be, gx.p, gpos.p, gf.p, N, H, hd);
        }
        const char *name = backward ? "rope_backward" : "rope_forward";
        if (settle(name)) compare(name, shape, false, {{gx.get(), want}});
    }
}

/* ---------------- activations ---------------- */

static void check_activations(long n, size_t pad) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%ld%s", n, pad ? " misaligned" : "");
    const auto g = random_floats(n, -8.0f, 8.0f), u = random_floats(n), dy = random_floats(n);
    Dev<float> gg(g, pad), gu(u, pad), gdy(dy, pad);
    { /* swiglu forward, into a separate output and in place over gate */
        std::vector<float> want(n);
        swiglu_forward(want.data(), g.data(), u.data(), n);
        Dev<float> out(std::vector<float>(n), pad), inplace(g, pad);
        be->swiglu_forward(be, out.p, gg.p, gu.p, n);
        be->swiglu_forward(be, inplace.p, inplace.p, gu.p, n);
        if (settle("swiglu_forward"))
            compare("swiglu_forward", shape, false, {{out.get(), want}, {inplace.get(), want}});
    }
    for (int mask = 1; mask < 4; mask++) {
        const bool with_dg = mask & 1, with_du = mask & 2;
        char name[64];
        snprintf(name, sizeof name, "swiglu_backward%s%s", with_dg ? "" : " -dg",
                 with_du ? "" : " -du");
        const auto dg0 = random_floats(n), du0 = random_floats(n);
        std::vector<float> dg = dg0, du = du0;
        swiglu_backward(with_dg ? dg.data() : NULL, with_du ? du.data() : NULL, dy.data(), g.data(),
                        u.data(), n);
        Dev<float> gdg(dg0, pad), gdu(du0, pad);
        be->swiglu_backward(be, with_dg ? gdg.p : NULL, with_du ? gdu.p : NULL, gdy.p, gg.p, gu.p,
                            n);
        if (settle(name)) compare(name, shape, false, {{gdg.get(), dg}, {gdu.get(), du}});
    }
    {
        std::vector<float> want = g;
        gelu_tanh_forward(want.data(), n);
        Dev<float> gx(g, pad);
        be->gelu_tanh_forward(be, gx.p, n);
        if (settle("gelu_tanh_forward"))
            compare("gelu_tanh_forward", shape, false, {{gx.get(), want}});
    }
    {
        const auto dx0 = random_floats(n);
        std::vector<float> want = dx0;
        gelu_tanh_backward(want.data(), dy.data(), g.data(), n);
        Dev<float> gdx(dx0, pad);
        be->gelu_tanh_backward(be, gdx.p, gdy.p, gg.p, n);
        if (settle("gelu_tanh_backward"))
            compare("gelu_tanh_backward", shape, false, {{gdx.get(), want}});
    }
}

/* ---------------- embedding ---------------- */

/* vocab V rows of which the tokens draw from the first `distinct` (repeats when distinct < N);
 * `skipped` rows get token -1 (the backward skips them). */
static void check_embedding(int N, int D, int V, int P, int distinct, int skipped, bool with_wpe,
                            const char *note) {
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d D=%d V=%d%s%s", N, D, V, with_wpe ? " +wpe" : "", note);
    std::vector<int> tok(N), pos(N);
    for (int n = 0; n < N; n++) {
        tok[n] = random_int(distinct);
        pos[n] = random_int(P);
    }
    const auto wte = random_floats((size_t)V * D), wpe = random_floats((size_t)P * D),
               dy = random_floats((size_t)N * D);
    Dev<int> gtok(tok), gpos(pos);
    Dev<float> gwte(wte), gwpe(wpe), gdy(dy);
    {
        std::vector<float> want((size_t)N * D);
        embedding_forward(want.data(), tok.data(), pos.data(), wte.data(),
                          with_wpe ? wpe.data() : NULL, N, D);
        Dev<float> out(std::vector<float>((size_t)N * D));
        be->embedding_forward(be, out.p, gtok.p, gpos.p, gwte.p, with_wpe ? gwpe.p : NULL, N, D);
        if (settle("embedding_forward"))
            compare("embedding_forward", shape, true, {{out.get(), want}});
    }
    for (int i = 0; i < skipped; i++)
        tok[random_int(N)] = -1;
    Dev<int> gtok_b(tok);
    const auto dwte0 = random_floats((size_t)V * D), dwpe0 = random_floats((size_t)P * D);
    std::vector<float> dwte = dwte0, dwpe = dwpe0;
    embedding_backward(dwte.data(), with_wpe ? dwpe.data() : NULL, dy.data(), tok.data(),
                       pos.data(), N, D);
    std::vector<float> runs[2][2];
    for (int run = 0; run < 2; run++) {
        Dev<float> gdwte(dwte0), gdwpe(dwpe0);
        be->embedding_backward(be, gdwte.p, with_wpe ? gdwpe.p : NULL, gdy.p, gtok_b.p, gpos.p, N,
                               D);
        if (!settle("embedding_backward")) return;
        runs[run][0] = gdwte.get();
        runs[run][1] = gdwpe.get();
    }
    compare("embedding_backward", shape, true, {{runs[0][0], dwte}, {runs[0][1], dwpe}});
    determinism("embedding_backward", shape, runs[0][0], runs[1][0]);
}

/* ---------------- dropout ---------------- */

static void check_dropout(long n, float p, uint64_t seed, uint64_t stream, size_t pad) {
    char shape[96];
    snprintf(shape, sizeof shape, "n=%ld p=%g%s", n, p, pad ? " misaligned" : "");
    const auto x = random_floats(n);
    Dev<float> gx(x, pad);
    {
        std::vector<float> want(n);
        dropout_forward(want.data(), x.data(), n, p, seed, stream);
        Dev<float> out(std::vector<float>(n), pad), inplace(x, pad);
        be->dropout_forward(be, out.p, gx.p, n, p, seed, stream);
        be->dropout_forward(be, inplace.p, inplace.p, n, p, seed, stream);
        if (settle("dropout_forward"))
            compare("dropout_forward", shape, true, {{out.get(), want}, {inplace.get(), want}});
    }
    { /* onto zeros, the backward's values are single products: the mask shows bit for bit */
        std::vector<float> want(n, 0.0f);
        dropout_backward(want.data(), x.data(), n, p, seed, stream);
        Dev<float> gd(std::vector<float>(n, 0.0f), pad);
        be->dropout_backward(be, gd.p, gx.p, n, p, seed, stream);
        if (settle("dropout_backward"))
            compare("dropout_backward (mask)", shape, true, {{gd.get(), want}});
    }
    { /* accumulating onto values (a fused multiply-add may round once less: tolerance) */
        const auto d0 = random_floats(n);
        std::vector<float> want = d0;
        dropout_backward(want.data(), x.data(), n, p, seed, stream);
        Dev<float> gd(d0, pad);
        be->dropout_backward(be, gd.p, gx.p, n, p, seed, stream);
        if (settle("dropout_backward"))
            compare("dropout_backward (+=)", shape, false, {{gd.get(), want}});
    }
}

/* ---------------- optimizer ---------------- */

static void check_optimizer(long n, int step, size_t pad) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%ld step=%d%s", n, step, pad ? " misaligned" : "");
    const auto p0 = random_floats(n), g = random_floats(n), m0 = random_floats(n, -0.1f, 0.1f),
               v0 = random_floats(n, 0.0f, 0.01f);
    {
        std::vector<float> p = p0, m = m0, v = v0;
        adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f,
                     step);
        Dev<float> gp(p0, pad), gg(g, pad), gm(m0, pad), gv(v0, pad);
        be->adamw_update(be, gp.p, gg.p, gm.p, gv.p, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
        if (settle("adamw_update"))
            compare("adamw_update", shape, false, {{gp.get(), p}, {gm.get(), m}, {gv.get(), v}});
    }
    {
        Dev<float> gg(g, pad);
        double want = 0.0;
        for (long i = 0; i < n; i++)
            want += (double)g[i] * g[i];
        const double got = be->sum_squares(be, gg.p, n), again = be->sum_squares(be, gg.p, n);
        if (settle("sum_squares")) {
            const double err = want > 0.0 ? fabs(got - want) / want : fabs(got);
            report("sum_squares", shape, err, false, false);
            cases++;
            const bool same = memcmp(&got, &again, sizeof got) == 0;
            if (!same) failures++;
            printf("%s %-28s %-30s %s\n", same ? "ok  " : "FAIL", "sum_squares", shape,
                   same ? "same bits on a second run" : "DIFFERENT bits on a second run");
        }
    }
    {
        std::vector<float> want = g;
        for (long i = 0; i < n; i++)
            want[i] *= 0.37f;
        Dev<float> gx(g, pad);
        be->scale(be, gx.p, 0.37f, n);
        if (settle("scale")) compare("scale", shape, true, {{gx.get(), want}});
    }
}

/* ---------------- data movement ---------------- */

static void check_rows(long N, int D, size_t pad) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%ld D=%d%s", N, D, pad ? " misaligned" : "");
    const auto x = random_floats((size_t)N * D), y = random_floats((size_t)N * D);
    {
        std::vector<float> want = x;
        for (size_t i = 0; i < want.size(); i++)
            want[i] += y[i];
        Dev<float> gx(x, pad), gy(y, pad);
        be->add_inplace(be, gx.p, gy.p, (long)x.size());
        if (settle("add_inplace")) compare("add_inplace", shape, true, {{gx.get(), want}});
    }
    {
        std::vector<int32_t> seg(N);
        for (long n = 0; n < N; n++)
            seg[n] = uniform01() < 0.3 ? -1 : (int32_t)(n / 3);
        std::vector<float> want = x;
        for (long n = 0; n < N; n++)
            if (seg[n] < 0) memset(&want[(size_t)n * D], 0, sizeof(float) * D);
        Dev<float> gx(x);
        Dev<int32_t> gseg(seg);
        be->zero_padding_rows(be, gx.p, gseg.p, N, D);
        if (settle("zero_padding_rows"))
            compare("zero_padding_rows", shape, true, {{gx.get(), want}});
    }
    { /* gather n distinct-or-not rows; scatter-add to distinct rows (a permutation prefix) */
        const long n = N > 1 ? N - N / 3 : 1;
        std::vector<long> perm(N);
        for (long i = 0; i < N; i++)
            perm[i] = i;
        for (long i = N - 1; i > 0; i--)
            std::swap(perm[i], perm[random_int((int)i + 1)]);
        std::vector<int64_t> gidx(n), sidx(n);
        for (long i = 0; i < n; i++) {
            gidx[i] = random_int((int)N);
            sidx[i] = perm[i];
        }
        std::vector<float> gathered((size_t)n * D), scattered = y;
        for (long i = 0; i < n; i++)
            for (int d = 0; d < D; d++) {
                gathered[(size_t)i * D + d] = x[(size_t)gidx[i] * D + d];
                scattered[(size_t)sidx[i] * D + d] += x[(size_t)i * D + d];
            }
        Dev<float> gx(x), gout(std::vector<float>((size_t)n * D)), gy(y);
        Dev<int64_t> ggidx(gidx), gsidx(sidx);
        be->gather_rows(be, gout.p, gx.p, ggidx.p, n, D);
        be->scatter_add_rows(be, gy.p, gx.p, gsidx.p, n, D);
        if (settle("gather/scatter_add_rows")) {
            compare("gather_rows", shape, true, {{gout.get(), gathered}});
            compare("scatter_add_rows", shape, true, {{gy.get(), scattered}});
        }
    }
    { /* copy a column block of D floats out of rows of D + 5 into rows of D + 3 */
        const long ld_in = D + 5, ld_out = D + 3;
        const auto src = random_floats((size_t)N * ld_in), dst0 = random_floats((size_t)N * ld_out);
        std::vector<float> want = dst0;
        for (long r = 0; r < N; r++)
            for (int d = 0; d < D; d++)
                want[r * ld_out + d] = src[r * ld_in + 2 + d];
        Dev<float> gsrc(src), gdst(dst0);
        be->copy_rows(be, gdst.p, ld_out, gsrc.p + 2, ld_in, N, D);
        if (settle("copy_rows")) compare("copy_rows", shape, true, {{gdst.get(), want}});
    }
}

static void check_qkv_split(int B, int Tq, int QD, int KD, int capacity, int length, bool bias) {
    char shape[96];
    snprintf(shape, sizeof shape, "B=%d Tq=%d QD=%d KD=%d%s", B, Tq, QD, KD, bias ? " +bias" : "");
    const long N = (long)B * Tq, ld_q = QD + 2 * KD, ld_kv = ld_q;
    /* one fused projection row [q | k | v], as the model's QKV matmul writes it */
    const auto src = random_floats((size_t)N * ld_q), bq = random_floats(QD),
               bk = random_floats(KD), bv = random_floats(KD);
    const size_t cache = (size_t)B * capacity * KD;
    const auto k0 = random_floats(cache), v0 = random_floats(cache);
    std::vector<float> q((size_t)N * QD), k = k0, v = v0;
    for (long n = 0; n < N; n++) {
        const long b = n / Tq, t = n % Tq, slot = (b * capacity + length + t) * KD;
        for (int i = 0; i < QD; i++)
            q[n * QD + i] = bias ? src[n * ld_q + i] + bq[i] : src[n * ld_q + i];
        for (int i = 0; i < KD; i++) {
            const float sk = src[n * ld_q + QD + i], sv = src[n * ld_q + QD + KD + i];
            k[slot + i] = bias ? sk + bk[i] : sk;
            v[slot + i] = bias ? sv + bv[i] : sv;
        }
    }
    Dev<float> gsrc(src), gbq(bq), gbk(bk), gbv(bv), gq(std::vector<float>((size_t)N * QD)), gk(k0),
        gv(v0);
    be->qkv_split(be, gq.p, gk.p, gv.p, gsrc.p, gsrc.p + QD, gsrc.p + QD + KD, ld_q, ld_kv,
                  bias ? gbq.p : NULL, bias ? gbk.p : NULL, bias ? gbv.p : NULL, B, Tq, QD, KD,
                  capacity, length);
    if (settle("qkv_split"))
        compare("qkv_split", shape, true, {{gq.get(), q}, {gk.get(), k}, {gv.get(), v}});
}

/* ---------------- pooling ---------------- */

static void check_pooling(int B, int T, int D) {
    char shape[64];
    snprintf(shape, sizeof shape, "B=%d T=%d D=%d", B, T, D);
    /* ranges inside rows of T: pooling_forward's [B, T, D] layout, as flat row ranges */
    std::vector<int32_t> s32(B), e32(B);
    std::vector<int64_t> s64(B), e64(B);
    for (int b = 0; b < B; b++) {
        s32[b] = random_int(T);
        e32[b] = s32[b] + 1 + random_int(T - s32[b]);
        s64[b] = (int64_t)b * T + s32[b];
        e64[b] = (int64_t)b * T + e32[b];
    }
    const auto h = random_floats((size_t)B * T * D), dvec = random_floats((size_t)B * D);
    Dev<float> gh(h), gdvec(dvec);
    Dev<int64_t> gs(s64), ge(e64);
    for (int mode = 0; mode < 2; mode++) {
        const mg_pooling pm = mode ? MG_POOL_MEAN : MG_POOL_LAST;
        const char *fwd = mode ? "range_pool_fwd mean" : "range_pool_fwd last";
        const char *bwd = mode ? "range_pool_bwd mean" : "range_pool_bwd last";
        std::vector<float> want((size_t)B * D);
        pooling_forward(want.data(), h.data(), s32.data(), e32.data(), B, T, D, pm);
        Dev<float> out(std::vector<float>((size_t)B * D));
        be->range_pool_forward(be, out.p, gh.p, gs.p, ge.p, B, D, pm);
        if (settle(fwd)) compare(fwd, shape, true, {{out.get(), want}});
        /* backward: the trainer's unpooling, w = 1 / length in float */
        const auto dh0 = random_floats((size_t)B * T * D);
        std::vector<float> dh = dh0;
        for (int b = 0; b < B; b++) {
            const int64_t from = mode ? s64[b] : e64[b] - 1;
            const float w = 1.0f / (float)(e64[b] - from);
            for (int64_t t = from; t < e64[b]; t++)
                for (int d = 0; d < D; d++)
                    dh[t * D + d] += w * dvec[(size_t)b * D + d];
        }
        Dev<float> gdh(dh0);
        be->range_pool_backward(be, gdh.p, gdvec.p, gs.p, ge.p, B, D, pm);
        if (settle(bwd)) compare(bwd, shape, false, {{gdh.get(), dh}});
    }
    { /* with a zero row, which must stay zero */
        std::vector<float> x = random_floats((size_t)B * D, -3.0f, 3.0f);
        memset(x.data(), 0, sizeof(float) * D);
        std::vector<float> want = x;
        l2_normalize_rows(want.data(), B, D);
        Dev<float> gx(x);
        be->l2_normalize_rows(be, gx.p, B, D);
        if (settle("l2_normalize_rows"))
            compare("l2_normalize_rows", shape, false, {{gx.get(), want}});
    }
}

/* ---------------- main ---------------- */

int main(void) {
    mg_error err;
    mg_error_clear(&err);
    mg_backend *backend = mg_backend_cuda_create(0, MG_PRECISION_FP32, &err);
    if (backend == NULL) {
        printf("check_kernels: no CUDA backend: %s\n", err.msg);
        return 1;
    }
    be = backend;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    const size_t workspace_bytes = ctx->workspace_bytes;
    printf("check_kernels on %s (%d multiprocessors, %zu MiB workspace)\n", be->name, ctx->sm_count,
           workspace_bytes >> 20);

    const int norm_shapes[][2] = {{1, 1},    {1, 7},    {3, 32},  {17, 100},
                                  {64, 768}, {5, 1030}, {600, 40}};
    for (const auto &s : norm_shapes)
        check_norms(s[0], s[1]);
    /* a workspace that holds the row statistics but no partials: one chunk, added directly */
    ctx->workspace_bytes = 2 * sizeof(float) * 600 + 64;
    check_norms(600, 40);
    ctx->workspace_bytes = workspace_bytes;

    check_rope(1, 1, 2, 10);
    check_rope(3, 2, 6, 100);
    check_rope(7, 4, 64, 8192);
    check_rope(5, 3, 130, 100000);
    check_rope(40, 8, 128, 4096);

    const long act_sizes[] = {1, 3, 4, 5, 1000, 4099};
    for (long n : act_sizes) {
        check_activations(n, 0);
        check_activations(n, 1);
    }

    check_embedding(1, 1, 3, 2, 3, 0, true, "");
    check_embedding(7, 33, 10, 8, 3, 2, true, " repeats");
    check_embedding(64, 100, 50, 16, 50, 5, false, "");
    check_embedding(300, 65, 40, 30, 5, 20, true, " hot ids");
    check_embedding(200, 256, 1000, 64, 1000, 0, true, "");
    ctx->workspace_bytes = 16; /* too small for the links: the column fallback */
    check_embedding(300, 65, 40, 30, 5, 20, true, " no workspace");
    ctx->workspace_bytes = workspace_bytes;

    const long drop_sizes[] = {1, 5, 64, 1001, 10000};
    const float drop_ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
    for (long n : drop_sizes)
        for (float p : drop_ps)
            check_dropout(n, p, 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, 7, 0);
    check_dropout(1001, 0.3f, 42, 123456789012345ULL, 1);
    check_dropout(4096, 0.25f, ~0ULL, ~0ULL, 0);

    const long opt_sizes[] = {1, 3, 8, 1001, 100003};
    for (long n : opt_sizes) {
        check_optimizer(n, 1, 0);
        check_optimizer(n, 10, 1);
    }

    check_rows(1, 1, 0);
    check_rows(7, 33, 1);
    check_rows(100, 64, 0);
    check_rows(37, 1000, 0);
    check_qkv_split(1, 1, 64, 64, 8, 0, true);
    check_qkv_split(2, 5, 96, 32, 16, 3, true);
    check_qkv_split(3, 7, 100, 20, 12, 5, false);

    check_pooling(1, 1, 1);
    check_pooling(3, 9, 37);
    check_pooling(8, 40, 256);
    check_pooling(5, 200, 1000);

    mg_backend_cuda_free(backend);
    printf("check_kernels: %d of %d cases failed\n", failures, cases);
    return failures ? 1 : 0;
}
