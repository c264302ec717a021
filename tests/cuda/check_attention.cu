/* The CUDA attention (csrc/backend/cuda/attention.cu) against the CPU reference
 * (csrc/ops/attention.c), forward and backward, over the layouts MAGNET uses: causal,
 * bidirectional, mixed roles, packed segments, padding, GQA, several head sizes, KV-cache decode
 * steps and batch rows. One line per case; exit status 1 if any case fails.
 *
 * Errors are max |gpu - cpu| / max |cpu| per tensor (for the backward: of the gradient added,
 * since dq/dk/dv start from random values to check that both sides accumulate). Limits:
 * 1e-5 forward, 1e-4 backward in fp32 mode; in bf16 mode, where the tile products run on the
 * tensor cores with bfloat16 inputs (head sizes up to 128, attention_mma.cu) or TF32 inputs
 * (dK/dV at 256), 1e-2 and 2e-2 (each case runs in both modes; the bfloat16 errors measure 3e-3
 * to 1e-2). The bf16 cases run twice: with attention_mma.cu's kernels and with
 * attention_packed.cu's (MAGNET_CUDA_ATTENTION_PACKED=1); where every tile walk starts on a tile
 * boundary (the cases marked same_bits), the packed kernels must give attention_mma.cu's bits
 * exactly. The backward also runs given the forward's output and saved statistics (as in a training
 * pass), within the same limits. Beyond the tolerance, exact checks: a query that sees no key gets
 * an output of exactly 0 and leaves dq untouched, the dK/dV rows past Tk in a KV cache are left
 * untouched, and a second run reproduces every bit. */
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <string>
#include <utility>

#include "check_common.h"
#include "ops/attention.h"

using check::Dev;
using check::rel_err;

namespace {

struct Case {
    std::string name;
    int B, Tq, Tk, q_start, kv_stride, Hq, Hkv, hd;
    /* roles and segments of key j of row b (queries are keys q_start ..) */
    std::function<void(int b, int j, uint8_t *role, int32_t *seg)> layout;
    bool null_dk = false; /* backward with dk = NULL (dq and dv still computed) */
    /* every walk of the tensor-core kernels starts on a tile boundary (one segment from key 0,
     * no leading padding): the packed kernels give attention_mma.cu's bits */
    bool same_bits = false;
};

/* Which bf16 kernels run: attention_mma.cu's, or attention_packed.cu's. */
void use_packed(bool on) {
    if (on)
        setenv("MAGNET_CUDA_ATTENTION_PACKED", "1", 1);
    else
        unsetenv("MAGNET_CUDA_ATTENTION_PACKED");
}
bool packed_pass = false; /* this pass runs attention_packed.cu */

constexpr double kFwdTol = 1e-5, kBwdTol = 1e-4;
/* bf16 mode: Q, K, V, dO, P and dS rounded to bfloat16 (8-bit mantissas) for the tile products */
constexpr double kTcFwdTol = 1e-2, kTcBwdTol = 2e-2;

int failures = 0;

/* The gradient added on top of `init`, so errors compare with the gradient's own magnitude. */
double grad_err(const std::vector<float> &got, const std::vector<float> &want,
                const std::vector<float> &init) {
    std::vector<float> added(want.size());
    for (size_t i = 0; i < want.size(); i++)
        added[i] = want[i] - init[i];
    return rel_err(got, want, check::max_abs(added));
}

void run(const Case &c, uint64_t seed) {
    check::Rng rng(seed);
    attention_shape s;
    s.B = c.B;
    s.Tq = c.Tq;
    s.Tk = c.Tk;
    s.q_start = c.q_start;
    s.kv_stride = c.kv_stride;
    s.Hq = c.Hq;
    s.Hkv = c.Hkv;
    s.hd = c.hd;
    const size_t nq = (size_t)c.B * c.Tq * c.Hq * c.hd;
    const size_t nkv = (size_t)c.B * c.kv_stride * c.Hkv * c.hd;

    std::vector<uint8_t> k_roles((size_t)c.B * c.kv_stride, MG_ROLE_SPAN);
    std::vector<int32_t> k_seg((size_t)c.B * c.kv_stride, -1);
    for (int b = 0; b < c.B; b++)
        for (int j = 0; j < c.Tk; j++)
            c.layout(b, j, &k_roles[(size_t)b * c.kv_stride + j],
                     &k_seg[(size_t)b * c.kv_stride + j]);
    std::vector<uint8_t> q_roles((size_t)c.B * c.Tq);
    std::vector<int32_t> q_seg((size_t)c.B * c.Tq);
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < c.Tq; i++) {
            q_roles[(size_t)b * c.Tq + i] = k_roles[(size_t)b * c.kv_stride + c.q_start + i];
            q_seg[(size_t)b * c.Tq + i] = k_seg[(size_t)b * c.kv_stride + c.q_start + i];
        }
    const std::vector<float> q = rng.vec(nq, -1.5f, 1.5f), k = rng.vec(nkv, -1.5f, 1.5f),
                             v = rng.vec(nkv, -1.0f, 1.0f), dout = rng.vec(nq, -1.0f, 1.0f);
    const std::vector<float> dq0 = rng.vec(nq, -0.5f, 0.5f), dk0 = rng.vec(nkv, -0.5f, 0.5f),
                             dv0 = rng.vec(nkv, -0.5f, 0.5f);

    /* CPU reference */
    const int threads = omp_get_max_threads();
    std::vector<float> scratch(ATTENTION_SCRATCH(c.B, c.Hkv, c.hd, c.Tk, threads) +
                               ATTENTION_BACKWARD_SCRATCH(c.hd, c.Tk, threads));
    std::vector<float> out_ref(nq);
    attention_forward(out_ref.data(), q.data(), k.data(), v.data(), q_roles.data(), q_seg.data(),
                      k_roles.data(), k_seg.data(), s, scratch.data());
    std::vector<float> dq_ref = dq0, dk_ref = dk0, dv_ref = dv0;
    attention_backward(dq_ref.data(), c.null_dk ? nullptr : dk_ref.data(), dv_ref.data(),
                       dout.data(), q.data(), k.data(), v.data(), q_roles.data(), q_seg.data(),
                       k_roles.data(), k_seg.data(), s, scratch.data());

    /* GPU */
    const mg_backend *be = check::backend();
    Dev<float> d_q(q), d_k(k), d_v(v), d_dout(dout), d_out(std::vector<float>(nq, 7.0f));
    Dev<uint8_t> dqr(q_roles), dkr(k_roles);
    Dev<int32_t> dqs(q_seg), dks(k_seg);
    Dev<float> fwd_scratch(std::vector<float>(cuda_attention_scratch(be, &s, false) + 1));
    Dev<float> stats(std::vector<float>((size_t)c.B * c.Hq * c.Tq, NAN));
    cuda_attention_forward(be, d_out.p, d_q.p, d_k.p, d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s, stats.p,
                           fwd_scratch.p);
    check::sync(c.name.c_str());
    const std::vector<float> out = d_out.get();
    const double e_out = rel_err(out, out_ref);

    Dev<float> gq(dq0), gk(dk0), gv(dv0);
    Dev<float> bwd_scratch(std::vector<float>(cuda_attention_scratch(be, &s, true), NAN));
    cuda_attention_backward(be, gq.p, c.null_dk ? nullptr : gk.p, gv.p, d_dout.p, d_q.p, d_k.p,
                            d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s, nullptr, nullptr, bwd_scratch.p);
    check::sync(c.name.c_str());
    const std::vector<float> dq = gq.get(), dk = gk.get(), dv = gv.get();

    /* The backward given the forward's output and saved statistics (a training pass): it skips
     * the statistics pass where the kernels allow, within the same bounds. */
    Dev<float> sq(dq0), sk(dk0), sv(dv0);
    cuda_attention_backward(be, sq.p, c.null_dk ? nullptr : sk.p, sv.p, d_dout.p, d_q.p, d_k.p,
                            d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s, d_out.p, stats.p, bwd_scratch.p);
    check::sync(c.name.c_str());
    const double e_saved =
        std::max({grad_err(sq.get(), dq_ref, dq0),
                  c.null_dk ? (sk.get() == dk0 ? 0.0 : INFINITY) : grad_err(sk.get(), dk_ref, dk0),
                  grad_err(sv.get(), dv_ref, dv0)});

    /* Deterministic: a second run gives the same bits (no atomics, fixed orders). */
    Dev<float> gq2(dq0), gk2(dk0), gv2(dv0), d_out2(std::vector<float>(nq, 7.0f));
    cuda_attention_forward(be, d_out2.p, d_q.p, d_k.p, d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s,
                           nullptr, fwd_scratch.p);
    cuda_attention_backward(be, gq2.p, c.null_dk ? nullptr : gk2.p, gv2.p, d_dout.p, d_q.p, d_k.p,
                            d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s, nullptr, nullptr, bwd_scratch.p);
    check::sync(c.name.c_str());
    const bool repeatable =
        d_out2.get() == out && gq2.get() == dq && gk2.get() == dk && gv2.get() == dv;
    const double e_dq = grad_err(dq, dq_ref, dq0);
    const double e_dk = c.null_dk ? (dk == dk0 ? 0.0 : INFINITY) : grad_err(dk, dk_ref, dk0);
    const double e_dv = grad_err(dv, dv_ref, dv0);

    /* exact expectations */
    std::string exact;
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < c.Tq; i++) {
            bool sees = false;
            const size_t qi = (size_t)b * c.Tq + i;
            for (int j = 0; j < c.Tk; j++) {
                const size_t kj = (size_t)b * c.kv_stride + j;
                sees |= q_seg[qi] >= 0 && k_seg[kj] == q_seg[qi] &&
                        (k_roles[kj] == MG_ROLE_CONTEXT ||
                         (q_roles[qi] == MG_ROLE_SPAN && j <= c.q_start + i));
            }
            if (sees) continue;
            for (size_t d = 0; d < (size_t)c.Hq * c.hd; d++) {
                if (out[qi * c.Hq * c.hd + d] != 0.0f) exact = "output of a blind query not 0";
                if (dq[qi * c.Hq * c.hd + d] != dq0[qi * c.Hq * c.hd + d])
                    exact = "dq of a blind query changed";
            }
        }
    for (int b = 0; b < c.B; b++)
        for (int j = c.Tk; j < c.kv_stride; j++)
            for (size_t d = 0; d < (size_t)c.Hkv * c.hd; d++) {
                const size_t at = ((size_t)b * c.kv_stride + j) * c.Hkv * c.hd + d;
                if (dk[at] != dk0[at] || dv[at] != dv0[at]) exact = "dk/dv row past Tk changed";
            }

    if (!repeatable) exact += " a second run differs";

    /* the packed kernels against attention_mma.cu's, bit for bit, where their walks agree */
    if (packed_pass && c.same_bits) {
        use_packed(false);
        Dev<float> mq(dq0), mk(dk0), mv(dv0), mout(std::vector<float>(nq, 7.0f));
        cuda_attention_forward(be, mout.p, d_q.p, d_k.p, d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s,
                               nullptr, fwd_scratch.p);
        cuda_attention_backward(be, mq.p, c.null_dk ? nullptr : mk.p, mv.p, d_dout.p, d_q.p, d_k.p,
                                d_v.p, dqr.p, dqs.p, dkr.p, dks.p, s, nullptr, nullptr,
                                bwd_scratch.p);
        check::sync(c.name.c_str());
        use_packed(true);
        if (mout.get() != out) exact += " output differs from attention_mma.cu";
        if (mq.get() != dq || mk.get() != dk || mv.get() != dv)
            exact += " gradients differ from attention_mma.cu";
    }
    const bool tc = check::precision() == MG_PRECISION_BF16;
    const double fwd_tol = tc ? kTcFwdTol : kFwdTol, bwd_tol = tc ? kTcBwdTol : kBwdTol;
    const bool ok = e_out <= fwd_tol && e_dq <= bwd_tol && e_dk <= bwd_tol && e_dv <= bwd_tol &&
                    e_saved <= bwd_tol && exact.empty();
    std::printf(
        "%-4s %s %-34s B=%d Tq=%-3d Tk=%-3d q0=%-2d Hq=%d Hkv=%d hd=%-3d  out %.2e  dq %.2e  "
        "dk %.2e  dv %.2e  saved-stats bwd %.2e%s%s\n",
        ok ? "ok" : "FAIL",
        packed_pass ? "pack"
        : tc        ? "bf16"
                    : "fp32",
        c.name.c_str(), c.B, c.Tq, c.Tk, c.q_start, c.Hq, c.Hkv, c.hd, e_out, e_dq, e_dk, e_dv,
        e_saved, exact.empty() ? "" : "  ", exact.c_str());
    if (!ok) failures++;
}

/* A self-attention case (queries are keys 0 .. T-1, no cache slack). */
Case self(const std::string &name, int B, int T, int Hq, int Hkv, int hd,
          std::function<void(int, int, uint8_t *, int32_t *)> layout, bool same_bits = false) {
    Case c{name, B, T, T, 0, T, Hq, Hkv, hd, std::move(layout)};
    c.same_bits = same_bits;
    return c;
}

/* Roles from a fixed hash of (b, j): about a third CONTEXT. */
uint8_t mixed_role(int b, int j) {
    return ((unsigned)(j * 7 + b * 3) % 3u) == 0 ? MG_ROLE_CONTEXT : MG_ROLE_SPAN;
}

} // namespace

int main() {
    const auto causal = [](int, int, uint8_t *r, int32_t *s) {
        *r = MG_ROLE_SPAN;
        *s = 0;
    };
    const auto bidir = [](int, int, uint8_t *r, int32_t *s) {
        *r = MG_ROLE_CONTEXT;
        *s = 0;
    };
    const auto mixed = [](int b, int j, uint8_t *r, int32_t *s) {
        *r = mixed_role(b, j);
        *s = 0;
    };
    /* two segments packed in a row (a different split per row), mixed roles */
    const auto packed = [](int b, int j, uint8_t *r, int32_t *s) {
        *r = mixed_role(b, j);
        *s = j < 17 + 4 * b ? 0 : 1;
    };
    /* two segments split at key 70 (inside a tile), mixed roles */
    const auto packed_at_70 = [](int b, int j, uint8_t *r, int32_t *s) {
        *r = mixed_role(b, j);
        *s = j < 70 ? 0 : 1;
    };
    /* row 0: trailing padding; row 1: leading padding and two segments */
    const auto padded = [](int b, int j, uint8_t *r, int32_t *s) {
        *r = mixed_role(b, j);
        if (b == 0)
            *s = j < 30 ? 3 : -1;
        else
            *s = j < 5 ? -1 : (j < 20 ? 0 : 1);
    };
    /* row 1 entirely padding */
    const auto empty_row = [](int b, int, uint8_t *r, int32_t *s) {
        *r = MG_ROLE_SPAN;
        *s = b == 1 ? -1 : 0;
    };
    /* a SPAN block (the blank) in the middle of CONTEXT, three segments */
    const auto infill = [](int, int j, uint8_t *r, int32_t *s) {
        *s = j / 50;
        const int t = j % 50;
        *r = t >= 20 && t < 32 ? MG_ROLE_SPAN : MG_ROLE_CONTEXT;
    };

    std::vector<Case> cases = {
        self("causal (all SPAN)", 2, 37, 2, 2, 16, causal, true),
        self("bidirectional (all CONTEXT)", 2, 37, 2, 2, 16, bidir, true),
        self("mixed roles, GQA 4/2", 2, 40, 4, 2, 16, mixed, true),
        self("two segments packed", 2, 45, 2, 2, 8, packed),
        self("padding (trailing, leading)", 2, 41, 2, 1, 16, padded),
        self("all-padding row", 2, 24, 2, 2, 8, empty_row),
        self("causal hd 64, GQA 4/2", 2, 70, 4, 2, 64, causal, true),
        self("bidirectional hd 64", 1, 33, 2, 2, 64, bidir, true),
        self("causal hd 64, 3 tiles, GQA 2/1", 1, 130, 2, 1, 64, causal, true),
        self("mixed hd 64, 2 segments, 3 tiles", 1, 130, 2, 1, 64, packed_at_70),
        self("infilling, 3 segments, multi-tile", 1, 150, 2, 1, 16, infill),
        self("mixed hd 20 (scalar loads)", 2, 23, 2, 2, 20, mixed, true),
        self("causal hd 48", 1, 29, 3, 1, 48, causal, true),
        self("mixed hd 128", 1, 40, 2, 2, 128, mixed, true),
        self("causal hd 128, 2 tiles", 1, 100, 2, 1, 128, causal, true),
        self("causal hd 256, GQA 2/1", 1, 35, 2, 1, 256, causal),
        self("mixed hd 512, two segments", 1, 21, 1, 1, 512, packed),
        /* KV cache: queries are keys q_start .. q_start+Tq-1 of rows kv_stride apart */
        Case{"decode Tq=1 (KV cache)", 2, 1, 21, 20, 32, 4, 2, 16, causal},
        Case{"decode Tq=3 (KV cache)", 2, 3, 21, 18, 32, 4, 2, 16, causal},
        Case{"decode Tq=3, CONTEXT keys after", 2, 3, 21, 10, 24, 2, 2, 16, mixed},
        Case{"decode Tq=3 hd 64, GQA 4/1", 1, 3, 40, 37, 48, 4, 1, 64, causal},
        /* a prefill of 70 queries after 30 cached keys: the tensor-core forward with q_start */
        Case{"prefill Tq=70 after 30 (KV cache)", 1, 70, 100, 30, 112, 2, 1, 32, mixed},
    };
    Case nodk = self("dk = NULL", 1, 20, 2, 2, 16, mixed);
    nodk.null_dk = true;
    cases.push_back(nodk);

    /* fp32: float32 tile products; bf16: the tensor cores (bfloat16 mma up to head size 128,
     * TF32 dK/dV products at 256), twice: attention_mma.cu's kernels, then attention_packed.cu's */
    const std::pair<mg_precision, bool> passes[] = {
        {MG_PRECISION_FP32, false}, {MG_PRECISION_BF16, false}, {MG_PRECISION_BF16, true}};
    for (const auto &[p, pack] : passes) {
        check::precision() = p;
        packed_pass = pack;
        use_packed(pack);
        uint64_t seed = 1;
        for (const Case &c : cases)
            run(c, seed++);
    }
    use_packed(false);
    const size_t total = std::size(passes) * cases.size();
    if (failures) {
        std::printf("check_attention: %d of %zu cases failed\n", failures, total);
        return 1;
    }
    std::printf("check_attention: all %zu cases passed\n", total);
    return 0;
}
