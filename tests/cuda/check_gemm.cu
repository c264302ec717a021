/* The CUDA backend's GEMM entries against the CPU's: cuda_sgemm in all four transpose
 * combinations with strided operands and beta 0 and 1, matmul_forward (bias, accumulate) and
 * matmul_backward (every gradient, and NULL ones), in fp32 (within 1e-5 of the result's scale)
 * and bf16 (within 2e-2; products with a dimension of at most 64 take float32 operands rounded to
 * TF32 in bf16 mode, within 2e-3), and the dropped products of LoRA's down projection (within
 * 1e-5 in both precisions on the CUDA cores; within 2e-3 on the tensor cores in bf16 mode). Also
 * the memory entries and the sticky error path. Prints each error; exit status 0 on success. */
#include "backend/cuda/cuda_common.h"

extern "C" {
#include "backend/cpu/blas.h"
#include "ops/matmul.h"
}

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static int failures = 0;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__);                                       \
            std::printf(__VA_ARGS__);                                                              \
            std::printf("\n");                                                                     \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static unsigned long long rng_state = 0x9e3779b97f4a7c15ull;

static float uniform() {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xffffff) / (float)0x1000000 * 2.0f - 1.0f;
}

static std::vector<float> random_vec(size_t n) {
    std::vector<float> v(n);
    for (float &x : v)
        x = uniform();
    return v;
}

/* A device copy of h (or a device buffer of h.size() floats filled with `fill`). */
struct Dev {
    const mg_backend *be;
    float *p = nullptr;
    size_t n = 0;
    Dev(const mg_backend *b, const std::vector<float> &h) : be(b), n(h.size()) {
        mg_error err;
        mg_error_clear(&err);
        p = static_cast<float *>(be->alloc(be, n * sizeof(float), "a test buffer", &err));
        if (p == nullptr) {
            std::printf("FAIL alloc: %s\n", err.msg);
            std::exit(1);
        }
        be->upload(be, p, h.data(), n * sizeof(float));
    }
    ~Dev() {
        be->free(be, p);
    }
    std::vector<float> get() const {
        std::vector<float> h(n);
        be->download(be, h.data(), p, n * sizeof(float));
        return h;
    }
    Dev(const Dev &) = delete;
    Dev &operator=(const Dev &) = delete;
};

/* max |got - want| over max(|want|, 1): the error relative to the result's scale. */
static double rel_error(const std::vector<float> &got, const std::vector<float> &want) {
    double num = 0.0, scale = 1.0;
    for (size_t i = 0; i < want.size(); i++) {
        const double d = std::fabs((double)got[i] - (double)want[i]);
        num = std::isnan(d) ? INFINITY : (d > num ? d : num);
        scale = std::fabs(want[i]) > scale ? std::fabs(want[i]) : scale;
    }
    return num / scale;
}

static void expect_synced(const mg_backend *be, const char *what) {
    mg_error err;
    mg_error_clear(&err);
    const int code = be->sync(be, &err);
    EXPECT(code == MG_OK, "%s: sync reported %d: %s", what, code, err.msg);
}

/* One shape, every transpose and beta. `staged`: the bf16 backend rounds this product's operands
 * to bfloat16 (its error must show it). */
static void check_sgemm_shape(const mg_backend *be, int M, int N, int K, int pad, double tol,
                              bool staged, const char *prec) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 2; bi++) {
                const float alpha = 0.75f, beta = (float)bi;
                const int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
                const int lda = ac + pad, ldb = bc + 2 * pad, ldc = N + pad;
                std::vector<float> A = random_vec((size_t)ar * lda),
                                   B = random_vec((size_t)br * ldb);
                std::vector<float> C = random_vec((size_t)M * ldc);
                std::vector<float> dev_c = C;
                if (beta == 0.0f) /* C must not be read: NaN would show up */
                    for (int m = 0; m < M; m++)
                        for (int n = 0; n < N; n++)
                            dev_c[(size_t)m * ldc + n] = NAN;
                Dev dA(be, A), dB(be, B), dC(be, dev_c);
                mg_sgemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
                be->sgemm(be, ta, tb, M, N, K, alpha, dA.p, lda, dB.p, ldb, beta, dC.p, ldc);
                expect_synced(be, "sgemm");
                std::vector<float> got = dC.get();
                const double e = rel_error(got, C); /* includes the padding, which must be kept */
                std::printf("  %s sgemm M=%d N=%d K=%d pad=%d trans_a=%d trans_b=%d beta=%g: max "
                            "rel error %.3g\n",
                            prec, M, N, K, pad, ta, tb, beta, e);
                EXPECT(e <= tol, "%s sgemm ta=%d tb=%d beta=%g: error %.3g > %.3g", prec, ta, tb,
                       beta, e, tol);
                /* bfloat16 keeps 8 mantissa bits, TF32 11: errors near 2e-3 against 3e-4 */
                EXPECT(!staged || e > 8e-4,
                       "%s sgemm M=%d N=%d K=%d: error %.3g is below "
                       "bfloat16 rounding, so the operands were not staged",
                       prec, M, N, K, e);
            }
}

static void check_sgemm(const mg_backend *be, double tol, const char *prec) {
    const bool bf16 = be->precision == MG_PRECISION_BF16;
    /* a dimension <= 64: float32 operands (rounded to TF32 by cuBLAS in bf16 mode) */
    check_sgemm_shape(be, 37, 29, 45, 3, bf16 ? 2e-3 : 1e-5, false, prec);
    /* every dimension > 64: bf16 staging, with the vector (row strides % 4 == 0) and the scalar
     * conversion */
    check_sgemm_shape(be, 130, 72, 100, 0, tol, bf16, prec);
    check_sgemm_shape(be, 130, 72, 100, 3, tol, bf16, prec);
    /* K = 0: C = beta C */
    {
        std::vector<float> C = random_vec(6 * 5), want = C;
        for (float &x : want)
            x *= 0.5f;
        Dev dC(be, C), dummy(be, std::vector<float>(1));
        be->sgemm(be, false, false, 6, 5, 0, 1.0f, dummy.p, 0, dummy.p, 5, 0.5f, dC.p, 5);
        expect_synced(be, "sgemm K=0");
        EXPECT(rel_error(dC.get(), want) == 0.0, "%s sgemm K=0 is not C = beta C", prec);
    }
}

static void check_matmul(const mg_backend *be, double tol, const char *prec) {
    const int N = 23, I = 40, O = 33;
    const std::vector<float> inp = random_vec((size_t)N * I), w = random_vec((size_t)O * I);
    const std::vector<float> bias = random_vec(O), dout = random_vec((size_t)N * O);
    Dev d_inp(be, inp), d_w(be, w), d_bias(be, bias), d_dout(be, dout);
    for (int with_bias = 0; with_bias < 2; with_bias++)
        for (int acc = 0; acc < 2; acc++) {
            std::vector<float> out = random_vec((size_t)N * O);
            Dev d_out(be, out);
            matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N,
                           I, O, acc);
            be->matmul_forward(be, d_out.p, d_inp.p, d_w.p, with_bias ? d_bias.p : nullptr, N, I, O,
                               acc);
            expect_synced(be, "matmul_forward");
            const double e = rel_error(d_out.get(), out);
            std::printf("  %s matmul_forward bias=%d accumulate=%d: max rel error %.3g\n", prec,
                        with_bias, acc, e);
            EXPECT(e <= tol, "%s matmul_forward bias=%d acc=%d: error %.3g", prec, with_bias, acc,
                   e);
        }
    for (int mask = 0; mask < 8; mask++) {
        /* every subset of {dinp, dweight, dbias}, accumulating into non-zero gradients */
        std::vector<float> dinp = random_vec((size_t)N * I), dw = random_vec((size_t)O * I);
        std::vector<float> db = random_vec(O);
        Dev d_dinp(be, dinp), d_dw(be, dw), d_db(be, db);
        matmul_backward(mask & 1 ? dinp.data() : nullptr, mask & 2 ? dw.data() : nullptr,
                        mask & 4 ? db.data() : nullptr, dout.data(), inp.data(), w.data(), N, I, O);
        be->matmul_backward(be, mask & 1 ? d_dinp.p : nullptr, mask & 2 ? d_dw.p : nullptr,
                            mask & 4 ? d_db.p : nullptr, d_dout.p, d_inp.p, d_w.p, N, I, O);
        expect_synced(be, "matmul_backward");
        const double e1 = rel_error(d_dinp.get(), dinp), e2 = rel_error(d_dw.get(), dw);
        const double e3 = rel_error(d_db.get(), db);
        std::printf("  %s matmul_backward dinp=%d dweight=%d dbias=%d: max rel errors %.3g %.3g "
                    "%.3g\n",
                    prec, mask & 1, (mask >> 1) & 1, (mask >> 2) & 1, e1, e2, e3);
        EXPECT(e1 <= tol && e2 <= tol && e3 <= 1e-5, "%s matmul_backward mask %d", prec, mask);
    }
}

/* The dropped products (LoRA's down projections with their input dropout fused in) against the
 * CPU entries, which materialise each drop_t(x) and call OpenBLAS: n products of one input, each
 * with its own factor and stream, dA NULL for one of them when `skip_dA`. Both compute in
 * float32 in every precision, so the bound is 1e-5 in bf16 mode too. Scratch starts as NaN: a
 * kernel that reads scratch it did not write shows up. Each result is computed twice and must
 * repeat bit for bit (the split sums are added in a fixed order). */
static void check_dropped_shape(const mg_backend *be, int N, int in, int r, int n, float p,
                                bool offset, bool skip_dA, const char *prec, double tol) {
    const mg_backend *cpu = mg_backend_cpu();
    const uint64_t seed = 0x5EEDull + (uint64_t)N;
    /* offset: x one float into its buffer, so rows are not 16-byte aligned */
    const size_t lead = offset ? 1 : 0;
    const size_t nx = (size_t)N * in, na = (size_t)r * in, nu = (size_t)N * r;
    std::vector<float> xbuf = random_vec(lead + nx), dinp0 = random_vec(nx);
    std::vector<std::vector<float>> A, du, dA0;
    for (int t = 0; t < n; t++) {
        A.push_back(random_vec(na));
        du.push_back(random_vec(nu));
        dA0.push_back(random_vec(na));
    }
    const float *x = xbuf.data() + lead;
    /* reference */
    std::vector<float> host_scratch(nx + 1), dinp_want = dinp0;
    std::vector<std::vector<float>> u_want(n, std::vector<float>(nu)), dA_want = dA0;
    mg_dropped_product prods[MG_DROPPED_MAX];
    for (int t = 0; t < n; t++)
        prods[t] = {A[t].data(), 1000 + (uint64_t)(7 * t + r), u_want[t].data(), du[t].data(),
                    skip_dA && t == 1 ? nullptr : dA_want[t].data()};
    cpu->dropped_matmul_forward(cpu, x, N, in, r, p, seed, prods, n, host_scratch.data());
    cpu->dropped_matmul_backward(cpu, dinp_want.data(), x, N, in, r, p, seed, prods, n,
                                 host_scratch.data());
    /* device */
    std::vector<float> nan_scratch(nx + 1, NAN);
    Dev gx(be, xbuf), gscratch(be, nan_scratch);
    Dev *gA[MG_DROPPED_MAX], *gdu[MG_DROPPED_MAX]; /* (<memory> clashes with the emulator) */
    for (int t = 0; t < n; t++) {
        gA[t] = new Dev(be, A[t]);
        gdu[t] = new Dev(be, du[t]);
    }
    std::vector<std::vector<float>> first;
    for (int rep = 0; rep < 2; rep++) {
        Dev gdinp(be, dinp0);
        Dev *gu[MG_DROPPED_MAX], *gdA[MG_DROPPED_MAX];
        for (int t = 0; t < n; t++) {
            gu[t] = new Dev(be, std::vector<float>(nu, NAN));
            gdA[t] = new Dev(be, dA0[t]);
            prods[t] = {gA[t]->p, 1000 + (uint64_t)(7 * t + r), gu[t]->p, gdu[t]->p,
                        skip_dA && t == 1 ? nullptr : gdA[t]->p};
        }
        be->dropped_matmul_forward(be, gx.p + lead, N, in, r, p, seed, prods, n, gscratch.p);
        be->dropped_matmul_backward(be, gdinp.p, gx.p + lead, N, in, r, p, seed, prods, n,
                                    gscratch.p);
        expect_synced(be, "dropped_matmul");
        std::vector<std::vector<float>> got;
        got.push_back(gdinp.get());
        for (int t = 0; t < n; t++) {
            got.push_back(gu[t]->get());
            got.push_back(gdA[t]->get());
            delete gu[t];
            delete gdA[t];
        }
        if (rep == 0) {
            double eu = 0.0, ea = 0.0;
            const double ei = rel_error(got[0], dinp_want);
            for (int t = 0; t < n; t++) {
                eu = std::fmax(eu, rel_error(got[1 + 2 * t], u_want[t]));
                ea = std::fmax(ea, rel_error(got[2 + 2 * t], dA_want[t]));
            }
            std::printf("  %s dropped_matmul N=%d in=%d r=%d n=%d p=%g%s%s: max rel error u %.3g, "
                        "dinp %.3g, dA %.3g\n",
                        prec, N, in, r, n, p, offset ? " misaligned" : "",
                        skip_dA ? " one dA NULL" : "", eu, ei, ea);
            EXPECT(eu <= tol && ei <= tol && ea <= tol,
                   "%s dropped_matmul N=%d in=%d r=%d n=%d: errors %.3g %.3g %.3g", prec, N, in, r,
                   n, eu, ei, ea);
            first = got;
        } else {
            EXPECT(got == first, "%s dropped_matmul N=%d in=%d r=%d n=%d: a second run differs",
                   prec, N, in, r, n);
        }
    }
    for (int t = 0; t < n; t++) {
        delete gA[t];
        delete gdu[t];
    }
}

static void check_dropped_shapes(const mg_backend *be, const char *prec, double tol) {
    check_dropped_shape(be, 1, 1, 1, 1, 0.5f, false, false, prec, tol);
    check_dropped_shape(be, 7, 13, 3, 2, 0.1f, true, false, prec, tol);
    check_dropped_shape(be, 130, 64, 16, 3, 0.05f, false, true, prec, tol); /* two row blocks */
    check_dropped_shape(be, 300, 600, 16, 1, 0.3f, false, false, prec,
                        tol); /* column, row slices */
    check_dropped_shape(be, 300, 600, 16, 3, 0.3f, false, false, prec, tol); /* the same, q/k/v */
    check_dropped_shape(be, 70, 520, 20, 2, 0.05f, true, false, prec, tol);  /* two rank tiles */
    check_dropped_shape(be, 257, 36, 40, 3, 0.9f, false, true, prec, tol);   /* rank beyond in */
}

/* Every shape on the CUDA cores (float32: 1e-5 in both precisions), then, in bf16 mode, on the
 * tensor cores (MAGNET_CUDA_LORA_TC=1: TF32 operands, within 2e-3 as the skinny GEMMs), where
 * the aligned shapes (in % 4 == 0, no offset) take the mma kernels and the others fall back; plus
 * shapes that end inside a 16-row, 16-column or 32-column tile and many column slices. */
static void check_dropped(const mg_backend *be, const char *prec) {
    unsetenv("MAGNET_CUDA_LORA_TC");
    check_dropped_shapes(be, prec, 1e-5);
    if (std::strcmp(prec, "bf16") != 0) return;
    setenv("MAGNET_CUDA_LORA_TC", "1", 1);
    const char *tc = "bf16 tensor-core";
    check_dropped_shapes(be, tc, 2e-3);
    check_dropped_shape(be, 45, 100, 16, 2, 0.1f, false, false, tc, 2e-3);
    check_dropped_shape(be, 33, 2048, 8, 3, 0.2f, false, false, tc, 2e-3);
    check_dropped_shape(be, 200, 44, 33, 1, 0.0f, false, true, tc, 2e-3);
    unsetenv("MAGNET_CUDA_LORA_TC");
}

static void check_memory_and_errors(const mg_backend *be) {
    mg_error err;
    mg_error_clear(&err);
    /* alloc is zero-filled; upload, copy, zero, download */
    float *p = static_cast<float *>(be->alloc(be, 100 * sizeof(float), "zeros", &err));
    float *q = static_cast<float *>(be->alloc(be, 100 * sizeof(float), "copy", &err));
    EXPECT(p != nullptr && q != nullptr, "alloc: %s", err.msg);
    std::vector<float> h(100, 1.0f), src(100);
    be->download(be, h.data(), p, 100 * sizeof(float));
    for (float x : h)
        EXPECT(x == 0.0f, "alloc is not zero-filled");
    for (int i = 0; i < 100; i++)
        src[i] = (float)i;
    be->upload(be, p, src.data(), 100 * sizeof(float));
    be->copy(be, q, p, 100 * sizeof(float));
    be->zero(be, p, 50 * sizeof(float));
    be->download(be, h.data(), q, 100 * sizeof(float));
    EXPECT(std::memcmp(h.data(), src.data(), sizeof(float) * 100) == 0, "upload/copy/download");
    be->download(be, h.data(), p, 100 * sizeof(float));
    for (int i = 0; i < 100; i++)
        EXPECT(h[i] == (i < 50 ? 0.0f : (float)i), "zero at %d", i);
    expect_synced(be, "memory");
    be->free(be, p);
    be->free(be, q);
    /* an impossible allocation fails with MG_ERR_NOMEM naming what it was for */
    void *huge = be->alloc(be, (size_t)1 << 60, "the huge test buffer", &err);
    EXPECT(huge == nullptr && err.code == MG_ERR_NOMEM &&
               std::strstr(err.msg, "the huge test buffer"),
           "huge alloc: code %d, %s", err.code, err.msg);
    std::printf("  huge alloc: %s\n", err.msg);
    /* a GEMM that cuBLAS rejects (lda < K) is reported by the next sync, once */
    Dev a(be, random_vec(64)), b(be, random_vec(64)), c(be, random_vec(64));
    be->sgemm(be, false, false, 4, 4, 4, 1.0f, a.p, 3, b.p, 4, 0.0f, c.p, 4);
    mg_error_clear(&err);
    const int code = be->sync(be, &err);
    std::printf("  bad lda: sync -> %d: %s\n", code, err.msg);
    EXPECT(code == MG_ERR_VALUE && std::strstr(err.msg, "CUBLAS_STATUS_INVALID_VALUE"),
           "bad lda not reported: %d %s", code, err.msg);
    expect_synced(be, "after the reported error");
}

int main() {
    char why[512] = "";
    const int count = mg_cuda_device_count(why, sizeof why);
    std::printf("CUDA devices: %d %s\n", count, why);
    if (count < 1) {
        std::printf("FAIL no device\n");
        return 1;
    }
    const struct {
        mg_precision p;
        const char *name;
        double tol;
    } modes[] = {{MG_PRECISION_FP32, "fp32", 1e-5}, {MG_PRECISION_BF16, "bf16", 2e-2}};
    for (const auto &mode : modes) {
        mg_error err;
        mg_error_clear(&err);
        mg_backend *be = mg_backend_cuda_create(0, mode.p, &err);
        if (be == nullptr) {
            std::printf("FAIL mg_backend_cuda_create(%s): %s\n", mode.name, err.msg);
            return 1;
        }
        std::printf("%s backend: %s\n", mode.name, be->name);
        check_sgemm(be, mode.tol, mode.name);
        check_matmul(be, mode.tol, mode.name);
        check_dropped(be, mode.name);
        if (mode.p == MG_PRECISION_FP32) check_memory_and_errors(be);
        mg_backend_cuda_free(be);
    }
    mg_error err;
    mg_error_clear(&err);
    EXPECT(mg_backend_cuda_create(count, MG_PRECISION_FP32, &err) == nullptr &&
               err.code == MG_ERR_VALUE,
           "device %d accepted", count);
    if (failures) {
        std::printf("check_gemm: %d failures\n", failures);
        return 1;
    }
    std::printf("check_gemm: all passed\n");
    return 0;
}
