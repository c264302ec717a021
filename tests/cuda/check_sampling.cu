/* The device's greedy choice (csrc/backend/cuda/sampling.cu) against sampling_greedy_rows
 * (csrc/ops/sampling.c): the same token in every row (ties: the first index; NaN logits never
 * chosen) and the raw log-probability within 1e-6. Exit status 1 on a failure. */
#include <string>

#include "check_common.h"

extern "C" {
#include "ops/sampling.h"
}

namespace {

int failures = 0;

void greedy_case(const std::string &name, int rows, int V, uint64_t seed, bool ties, bool nan0,
                 bool all_nan_row = false) {
    check::Rng rng(seed);
    std::vector<float> logits = rng.vec((size_t)rows * V, -8.0f, 8.0f);
    if (ties) /* several equal maxima per row: the first must win */
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < 3; k++)
                logits[(size_t)r * V + (V / 3) * k + r % 7] = 20.0f;
    if (nan0) { /* at index 0, and where `ties` put row 1's maxima */
        logits[0] = NAN;
        for (int k = 0; k < 3; k++)
            logits[(size_t)V + (V / 3) * k + 1] = NAN;
    }
    if (all_nan_row)
        for (int k = 0; k < V; k++)
            logits[k] = NAN;
    std::vector<int32_t> want_tok(rows), got_tok(rows);
    std::vector<float> want_lp(rows), got_lp(rows);
    sampling_greedy_rows(logits.data(), rows, V, want_tok.data(), want_lp.data());
    check::Dev<float> d(logits);
    check::backend()->greedy_rows(check::backend(), d.p, rows, V, got_tok.data(), got_lp.data());
    check::sync(name.c_str());
    int wrong = 0;
    double lp_err = 0.0;
    for (int r = 0; r < rows; r++) {
        wrong += got_tok[r] != want_tok[r];
        if (std::isfinite(want_lp[r]))
            lp_err = std::fmax(lp_err, std::fabs((double)got_lp[r] - want_lp[r]));
        else if (!(std::isnan(want_lp[r]) && std::isnan(got_lp[r])) && got_lp[r] != want_lp[r])
            wrong++;
    }
    const bool ok = wrong == 0 && lp_err <= 1e-6;
    std::printf("%-4s %-36s tokens wrong %d  logprob %.2e\n", ok ? "ok" : "FAIL", name.c_str(),
                wrong, lp_err);
    if (!ok) failures++;
}

} // namespace

int main() {
    greedy_case("one row, V=96", 1, 96, 1, false, false);
    greedy_case("batch 8, V=50257", 8, 50257, 2, false, false);
    greedy_case("batch 32, V=1000, ties", 32, 1000, 3, true, false);
    greedy_case("batch 3, V=257, NaN at index 0", 3, 257, 4, false, true);
    greedy_case("batch 3, V=257, NaN on tied maxima", 3, 257, 6, true, true);
    greedy_case("batch 2, V=300, a row all NaN", 2, 300, 7, false, false, true);
    greedy_case("batch 5, V=31 (fewer than the threads)", 5, 31, 5, true, false);
    if (failures) {
        std::printf("check_sampling: %d case(s) failed\n", failures);
        return 1;
    }
    std::printf("check_sampling: all cases passed\n");
    return 0;
}
