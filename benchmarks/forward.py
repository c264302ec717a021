"""Full-sequence forward throughput: magnet against transformers/PyTorch on SmolLM2-135M.

Run with::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/forward.py

(the two OpenBLAS overrides are unset for both peers, in that command only).

Both peers load the same GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``, found as
``tests/conftest.find_smollm2_gguf`` finds it), dequantized to float32, and compute logits for
every position of a ``batch x seq`` block of random token ids: magnet with
``Model.from_pretrained(gguf).logits(ids)``, transformers with
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`` (its default
attention implementation) under ``torch.no_grad()``. Both get the same thread count
(``torch.set_num_threads`` / ``magnet.set_num_threads``). After one warm-up each, the repeats
alternate magnet / torch so drift on a shared machine hits both alike; medians are reported.

The ceiling is OpenBLAS itself, measured in the same run: ``scipy_cblas_sgemm`` of the
scipy-openblas32 library magnet links, called through ctypes on the model's own GEMM shapes
(M = batch*seq rows against each weight matrix, B transposed as magnet calls it). Its GFLOP/s
is the FLOP-weighted rate of those GEMMs, i.e. sum(flops) / sum(time) over one forward's mix,
timed once per repeat right after the two peers (each shape: one wake-up call, then the median
of back-to-back calls; the median over repeats is reported).

Model FLOPs per forward (what the GFLOP/s columns count)::

    2 * tokens * (non-embedding parameters + vocab * hidden)        # every linear layer + lm_head
    + 4 * layers * batch * heads * head_dim * seq * (seq + 1) / 2   # causal QK^T and PV

(non-embedding parameters = all parameters but the token embedding; the lm_head term counts the
tied embedding once as the output projection; norms, RoPE and softmax are not counted).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    model, cores = platform.processor() or platform.machine(), os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {"cpu": model, "cores": cores, "usable_cores": affinity}


def openblas() -> ctypes.CDLL:
    import scipy_openblas32

    lib_dir = Path(scipy_openblas32.get_lib_dir())
    name = scipy_openblas32.get_library()
    path = next(p for p in sorted(lib_dir.glob(f"lib{name}*.so*")) if p.is_file())
    lib = ctypes.CDLL(str(path))
    lib.scipy_cblas_sgemm.restype = None
    lib.scipy_cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p,
                                                           ctypes.c_int, ctypes.c_void_p,
                                                           ctypes.c_int, ctypes.c_float,
                                                           ctypes.c_void_p, ctypes.c_int]
    return lib


def gemm_shapes(cfg) -> list[tuple[str, int, int, int]]:
    """(name, count per forward, N, K) of every weight GEMM; M is the token count."""
    D, F, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    return [("qkv", L, qkv, D), ("attn_out", L, D, cfg.num_heads * cfg.head_dim),
            ("gate", L, F, D), ("up", L, F, D), ("down", L, D, F), ("lm_head", 1, V, D)]


class SgemmMix:
    """OpenBLAS sgemm on one forward's GEMM shapes (A[M,K] @ B[N,K]^T, as magnet calls it)."""

    def __init__(self, lib: ctypes.CDLL, M: int, shapes) -> None:
        rng = np.random.default_rng(0)
        self.lib, self.M, self.shapes = lib, M, shapes
        self.bufs = [(rng.standard_normal((M, K), dtype=np.float32),
                      rng.standard_normal((N, K), dtype=np.float32),
                      np.empty((M, N), np.float32)) for _, _, N, K in shapes]
        self.per_shape: dict[str, list[float]] = {f"{n} {M}x{N}x{K}": [] for n, _, N, K in shapes}
        self.rates: list[float] = []

    def run(self) -> None:
        """Times each shape once; records its GFLOP/s and the FLOP-weighted rate of the mix."""
        total_flops = total_time = 0.0
        for (name, count, N, K), (a, b, c) in zip(self.shapes, self.bufs, strict=True):
            def call(a=a, b=b, c=c, N=N, K=K) -> float:
                t0 = time.perf_counter()
                # CblasRowMajor=101, CblasNoTrans=111, CblasTrans=112
                self.lib.scipy_cblas_sgemm(101, 111, 112, self.M, N, K, 1.0, a.ctypes.data, K,
                                           b.ctypes.data, K, 0.0, c.ctypes.data, N)
                return time.perf_counter() - t0

            # one call wakes the threads; then back-to-back calls (>= ~50 ms), as in a forward
            first = call()
            t = statistics.median(call() for _ in range(max(3, int(0.05 / max(first, 1e-6)))))
            flops = 2.0 * self.M * N * K
            self.per_shape[f"{name} {self.M}x{N}x{K}"].append(flops / t / 1e9)
            total_flops += count * flops
            total_time += count * t
        self.rates.append(total_flops / total_time / 1e9)


def model_flops(cfg, n_params: int, batch: int, seq: int) -> float:
    tokens = batch * seq
    non_embedding = n_params - cfg.vocab_size * cfg.hidden_size
    if cfg.arch == "gpt2":
        non_embedding -= cfg.max_positions * cfg.hidden_size
    linear = 2.0 * tokens * (non_embedding + cfg.vocab_size * cfg.hidden_size)
    attention = 4.0 * cfg.num_layers * batch * cfg.num_heads * cfg.head_dim * seq * (seq + 1) / 2
    return linear + attention


def main() -> None:
    import magnet
    from tests.conftest import find_smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=magnet.get_num_threads())
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("SmolLM2-135M GGUF not found (set MAGNET_SMOLLM2_GGUF)")

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    magnet.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    ours = magnet.Model.from_pretrained(gguf)
    cfg = ours.config
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ref.eval()

    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq))
    ids_t = torch.as_tensor(ids, dtype=torch.long)

    def run_magnet() -> np.ndarray:
        return ours.logits(ids)

    def run_torch() -> np.ndarray:
        with torch.no_grad():
            return ref(input_ids=ids_t).logits

    M = args.batch * args.seq
    # the library magnet already loaded (same handle), with magnet's thread setup
    sgemm = SgemmMix(openblas(), M, gemm_shapes(cfg))

    # warm-up, and a sanity check that both compute the same function
    a, b = run_magnet(), run_torch().numpy()
    max_diff = float(np.abs(a[:, :8] - b[:, :8]).max())
    del a, b
    sgemm.run()
    sgemm.rates.clear()
    for v in sgemm.per_shape.values():
        v.clear()
    # interleaved: magnet, torch, then the sgemm mix, so load drift hits all three alike
    times: dict[str, list[float]] = {"magnet": [], "torch": []}
    for _ in range(args.repeats):
        for name, fn in (("magnet", run_magnet), ("torch", run_torch)):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            del out
        sgemm.run()
    peak = statistics.median(sgemm.rates)
    per_shape = {k: statistics.median(v) for k, v in sgemm.per_shape.items()}

    tokens = args.batch * args.seq
    flops = model_flops(cfg, ours.num_parameters, args.batch, args.seq)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    gflops = {k: flops / v / 1e9 for k, v in med.items()}
    mach = machine()
    result = {
        "machine": mach, "threads": args.threads, "batch": args.batch, "seq": args.seq,
        "repeats": args.repeats, "gguf": gguf.name, "params": ours.num_parameters,
        "model_gflop_per_forward": flops / 1e9,
        "seconds": times, "median_seconds": med, "tokens_per_second": tps,
        "model_gflops": gflops, "ratio_magnet_over_torch": tps["magnet"] / tps["torch"],
        "openblas_sgemm_gflops": peak, "openblas_sgemm_gflops_runs": sgemm.rates,
        "openblas_sgemm_per_shape": per_shape,
        "magnet_share_of_sgemm_peak": gflops["magnet"] / peak,
        "torch_share_of_sgemm_peak": gflops["torch"] / peak,
        "max_abs_logit_diff_first_8_positions": max_diff,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__},
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                               "OMP_NUM_THREADS")},
    }

    print(f"\nMachine: {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable); "
          f"threads={args.threads}; SmolLM2-135M ({gguf.name}, float32), batch {args.batch} x "
          f"{args.seq} tokens, logits at every position; median of {args.repeats} interleaved "
          f"runs; {flops / 1e9:.1f} model GFLOP per forward\n")
    print("| peer | median s | tokens/s | model GFLOP/s | share of OpenBLAS sgemm peak |")
    print("|---|---:|---:|---:|---:|")
    for k in ("magnet", "torch"):
        print(f"| {k} | {med[k]:.3f} | {tps[k]:,.0f} | {gflops[k]:.1f} | {gflops[k] / peak:.0%} |")
    print(f"| OpenBLAS sgemm (model's GEMM mix, M={M}) | | | {peak:.1f} | 100% |")
    print(f"\nmagnet / torch throughput: {tps['magnet'] / tps['torch']:.2f}x; "
          f"max |logit difference| over the first 8 positions: {max_diff:.2e}")
    print("sgemm per shape (GFLOP/s): " + ", ".join(f"{k}: {v:.1f}" for k, v in per_shape.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
