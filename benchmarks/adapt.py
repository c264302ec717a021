"""Training throughput of the MAGNET step: magnet's C trainer against the same step in PyTorch.

Run from the repository root, after ``python setup.py build_ext --inplace``::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/adapt.py

(both variables unset for both peers, in that command only). Flags: ``--threads``, ``--batch``,
``--seq``, ``--steps`` (timed optimizer steps per repeat), ``--repeats``, ``--warmup``, ``--json``.

The step is the ``magnet`` preset of ``Model.adapt``: a masked view (MNTP + MSG, spans, 25%
all-SPAN rows) of ``batch`` chunks of ``seq`` tokens, plus SSCL rows (BOS + instruction + at most
64 text tokens + EOS) twice (SimCSE dropout positives), one forward over the combined batch
under the unified attention rule, the three losses with weights 1/1/1, backward, clipping at 1.0
and AdamW; LoRA r=16, alpha=32 on q, k, v, o, gate, up, down of every layer, LoRA dropout 0.05,
residual dropout 0.1. The model is SmolLM2-135M-Instruct (GGUF, dequantized to float32 by both).

- magnet: ``magnet.Model.from_pretrained(gguf)``, ``_C.Trainer.micro_step(...)`` + ``.apply()``.
- PyTorch: ``benchmarks/torch_magnet_step.py`` on ``transformers.AutoModelForCausalLM`` loaded
  from the same GGUF, with the same LoRA initial values, fed the same masked batches (built once
  with magnet's C masking, ``magnet._C.masked_view``, same seed and stream as the trainer uses),
  with the unified rule as an explicit additive 4D mask.

Each peer runs in its own subprocess (so its memory is its own); the parent interleaves timed
blocks of ``--steps`` steps (alternating which peer goes first) after ``--warmup`` steps each, and
reports medians over ``--repeats`` blocks. Tokens are the real (non-padding) tokens of the
combined batch. Memory: the process's resident set after the model is loaded and the adapters
attached (before the optimizer exists), and the peak resident set (VmHWM, reset through
/proc/self/clear_refs at that point) while training; the table gives both absolute peak and
delta = peak - loaded. ``ru_maxrss`` (lifetime peak, model loading included) is in the JSON.

Model FLOPs per step (``n`` real tokens, ``n_lab`` labelled positions, rows of length ``len_r``):
``6 * n * (P_layers + P_lora) + 6 * n_lab * V * D + 12 * L * H * d * sum(len_r^2)``, with
``P_layers`` the weights of the per-layer projections (embeddings excluded: a lookup) and the LM
head counted only on labelled positions (the engine scores only those). This is the usual
"6 x tokens x params" convention; with the base frozen the weight gradients of the base are not
computed, so the executed count is ``4 * n * P_layers + 6 * n * P_lora + 4 * n_lab * V * D +
attention``, reported too. The sgemm peak is measured in the same run by calling
``scipy_cblas_sgemm`` of the scipy_openblas32 library (the one magnet links) through ctypes on
the model's GEMM shapes with the same thread count; "peak" is the best shape, "mix" the
FLOP-weighted rate over the step's GEMM mix.

After timing, each peer resets its adapters to the shared initial values and computes the losses
and gradient norm of the first batch with dropout off, as a check that both run the same step.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# this checkout's magnet (built in place), before any installed copy
sys.path[:0] = [str(ROOT), str(HERE)]
LORA_RANK, LORA_ALPHA, LORA_SEED = 16, 32.0, 0
LORA_DROPOUT, RESID_DROPOUT = 0.05, 0.1
SSCL_MAX_TOKENS = 64
BASE_SEED = 1234


# ---------------------------------------------------------------------------- helpers


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": "unknown", "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name", "unknown")
        cores = int(fields.get("Core(s) per socket", 0)) * int(fields.get("Socket(s)", 1))
        info["cores"] = cores or None
        info["threads_per_core"] = fields.get("Thread(s) per core")
        info["flags_avx512f"] = "avx512f" in fields.get("Flags", "")
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return info


def find_gguf(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    from tests.conftest import find_smollm2_gguf

    path = find_smollm2_gguf()
    if path is None:
        raise SystemExit("SmolLM2-135M GGUF not found (set MAGNET_SMOLLM2_GGUF or use --gguf)")
    return path


def default_text() -> Path:
    base = Path(os.environ.get("MAGNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return base / "wikitext2" / "wiki.valid.tokens"


# ---------------------------------------------------------------------------- batches


def combine_rows(chunks: list[np.ndarray], instr: list[int] | np.ndarray, eos_id: int,
                 masking: dict[str, Any], vocab_size: int, seed: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """One micro-batch of the ``magnet`` preset from ``chunks`` (token-id rows, BOS first).

    Returns the trainer's inputs (``masked``/``mlen``: the chunks; ``a``/``alen``/``apool``: the
    SSCL rows BOS + instruction + at most 64 text tokens + EOS, pooled from the text on) and the
    combined batch of the PyTorch peer: ``toks``/``roles``/``segs``/``mntp``/``msg`` [R, T] with
    R = 3 x batch (masked view rows, SSCL anchors, SSCL positives; the masked view expanded with
    ``_C.masked_view``, the stream the trainer uses for row r), plus ``seed``; and the batch's
    statistics (real tokens, positions, labelled positions, sum of squared row lengths).
    """
    from magnet import _C
    from magnet.data import pad_rows

    batch = len(chunks)
    masked, mlen = pad_rows(chunks)
    rows = [np.concatenate([instr, c[1:][:SSCL_MAX_TOKENS], [eos_id]]).astype(np.int32)
            for c in chunks]
    a, alen = pad_rows(rows)
    apool = np.full(batch, len(instr), np.int32)
    T = max(masked.shape[1], a.shape[1])
    R = batch + 2 * batch
    toks = np.zeros((R, T), np.int64)
    roles = np.zeros((R, T), np.uint8)
    segs = np.full((R, T), -1, np.int32)
    mntp = np.full((R, T), -100, np.int64)
    msg = np.full((R, T), -100, np.int64)
    for r in range(batch):
        L = int(mlen[r])
        t, ro, l1, l2 = _C.masked_view(np.ascontiguousarray(masked[r, :L]), masking,
                                       vocab_size, seed, _C.MASK_STREAM_BASE + r)
        toks[r, :L], roles[r, :L], segs[r, :L], mntp[r, :L], msg[r, :L] = t, ro, 0, l1, l2
    for v in range(2):
        for r in range(batch):
            L = int(alen[r])
            toks[batch + v * batch + r, :L] = a[r, :L]
            segs[batch + v * batch + r, :L] = 0
    lens = (segs >= 0).sum(1)
    stats = {"tokens": int(lens.sum()), "positions": R * T,
             "labels": int((mntp != -100).sum() + (msg != -100).sum()),
             "sum_len2": int((lens.astype(np.int64) ** 2).sum()), "rows": R, "T": T}
    arrays = {name: np.ascontiguousarray(arr) for name, arr in (
        ("masked", masked), ("mlen", mlen), ("a", a), ("alen", alen), ("apool", apool),
        ("toks", toks), ("roles", roles), ("segs", segs), ("mntp", mntp), ("msg", msg))}
    arrays["seed"] = np.array([seed], np.int64)
    return arrays, stats


def build_batches(gguf: Path, text: Path, n: int, batch: int, seq: int, out: Path
                  ) -> dict[str, Any]:
    """``n`` micro-batches as magnet's adapt() builds them, plus the masked views expanded with
    ``_C.masked_view`` for the PyTorch peer; also the LoRA initial values. Saved to ``out``."""
    import magnet
    from magnet.adapt import DEFAULT_INSTRUCTION, mask_token_id
    from magnet.data import ChunkStream

    model = magnet.Model.from_pretrained(gguf)
    tok = model.tokenizer
    cfg = model.config
    words = text.read_text(encoding="utf-8") if text.is_file() else ""
    if len(words) < 10_000:
        raise SystemExit(f"benchmark text not found or too short: {text}")
    stream = ChunkStream([words], tok, seq, BASE_SEED)
    masking = dict(mask_token_id=mask_token_id(model), use_spans=1, all_span_frac=0.25)
    instr = tok.encode(DEFAULT_INSTRUCTION, add_bos=True)
    arrays: dict[str, np.ndarray] = {}
    stats = []
    for k in range(n):
        chunks = [c for c in stream.take(batch * 2) if len(c) == seq][:batch]
        batch_arrays, batch_stats = combine_rows(chunks, instr, tok.eos_id, masking,
                                                 cfg.vocab_size, BASE_SEED + k)
        stats.append(batch_stats)
        for name, arr in batch_arrays.items():
            arrays[f"{k}.{name}"] = arr
    model._c.attach_lora(LORA_RANK, LORA_ALPHA, (1 << 7) - 1, LORA_SEED)
    for name, arr in model._c.lora_state_dict().items():
        arrays[f"lora.{name}"] = arr
    np.savez(out, **arrays)
    shape = {**model_shape(model.config), "params": model.num_parameters,
             "mask_token_id": masking["mask_token_id"]}
    del model
    gc.collect()
    return {"stats": stats, "shape": shape, "masking": masking}


def model_shape(c: Any) -> dict[str, int]:
    """The sizes ``step_flops`` needs, from a ``magnet.ModelConfig`` (LLaMA layout): layers,
    widths, vocabulary, the weights of one layer's projections and of all LoRA adapters."""
    qd, kd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    d, f = c.hidden_size, c.intermediate_size
    return {"L": c.num_layers, "D": d, "F": f, "QD": qd, "KD": kd, "V": c.vocab_size,
            "P_layer": d * (qd + 2 * kd) + qd * d + 3 * d * f,
            "P_lora": c.num_layers * LORA_RANK * ((d + qd) + 2 * (d + kd) + (qd + d)
                                                  + 3 * (d + f))}


def step_flops(s: dict[str, Any], sh: dict[str, Any]) -> tuple[float, float]:
    """(6x convention, executed with the base frozen) model FLOPs of one step."""
    attn = 12.0 * sh["L"] * sh["QD"] * s["sum_len2"]
    head = sh["V"] * sh["D"] * s["labels"]
    conv = 6.0 * s["tokens"] * (sh["L"] * sh["P_layer"] + sh["P_lora"]) + 6.0 * head + attn
    executed = (4.0 * s["tokens"] * sh["L"] * sh["P_layer"] + 6.0 * s["tokens"] * sh["P_lora"]
                + 4.0 * head + attn)
    return conv, executed


# ---------------------------------------------------------------------------- sgemm peak


def sgemm_rates(shapes: list[tuple[str, int, int, int, bool, bool, int]], threads: int,
                min_time: float = 0.3) -> list[dict[str, Any]]:
    """GFLOP/s of row-major C[M,N] = op(A) op(B) for each (name, M, N, K, ta, tb, count)."""
    import scipy_openblas32

    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(),
                                   f"lib{scipy_openblas32.get_library()}.so"))
    lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
    lib.scipy_openblas_set_num_threads(threads)
    fn = lib.scipy_cblas_sgemm
    ci, cf, cp = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [ci, ci, ci, ci, ci, ci, cf, cp, ci, cp, ci, cf, cp, ci]
    fn.restype = None
    out = []
    rng = np.random.default_rng(0)
    for name, M, N, K, ta, tb, count in shapes:
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        c = np.zeros((M, N), np.float32)
        args = (101, 112 if ta else 111, 112 if tb else 111, M, N, K, 1.0,
                a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, N)
        fn(*args)
        best = float("inf")
        spent = 0.0
        reps = 0
        while spent < min_time or reps < 3:
            t0 = time.perf_counter()
            fn(*args)
            dt = time.perf_counter() - t0
            best = min(best, dt)
            spent += dt
            reps += 1
        out.append({"name": name, "M": M, "N": N, "K": K, "count": count,
                    "gflops": 2.0 * M * N * K / best / 1e9})
    return out


def gemm_shapes(sh: dict[str, Any], positions: int, labels: int
                ) -> list[tuple[str, int, int, int, bool, bool, int]]:
    """The GEMMs of one step over all layers as magnet issues them (weights stored [out, in];
    forward A W^T, input gradient dY W); the LM head on the labelled rows."""
    n, d, f, qd, kd, L = positions, sh["D"], sh["F"], sh["QD"], sh["KD"], sh["L"]
    w = qd + 2 * kd
    return [("fwd qkv", n, w, d, False, True, L), ("fwd o", n, d, qd, False, True, L),
            ("fwd gate/up", n, f, d, False, True, 2 * L), ("fwd down", n, d, f, False, True, L),
            ("bwd dx qkv", n, d, w, False, False, L), ("bwd dx o", n, qd, d, False, False, L),
            ("bwd dx gate/up", n, d, f, False, False, 2 * L),
            ("bwd dx down", n, f, d, False, False, L),
            ("fwd lm head", labels, sh["V"], d, False, True, 1),
            ("bwd dx lm head", labels, d, sh["V"], False, False, 1)]


def summarize_sgemm(rates: list[dict[str, Any]]) -> dict[str, float]:
    flops = sum(2.0 * r["M"] * r["N"] * r["K"] * r["count"] for r in rates)
    secs = sum(2.0 * r["M"] * r["N"] * r["K"] * r["count"] / (r["gflops"] * 1e9) for r in rates)
    return {"peak": max(r["gflops"] for r in rates), "mix": flops / secs / 1e9}


# ---------------------------------------------------------------------------- workers


class Worker:
    """A peer in its own process, driven by JSON lines over pipes."""

    def __init__(self, peer: str, args: argparse.Namespace, gguf: Path, batches: Path,
                 n: int, log: Path) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", peer, "--gguf", str(gguf),
               "--batches", str(batches), "--n-batches", str(n), "--threads", str(args.threads)]
        self.peer = peer
        self.log = log
        self.log_f = open(log, "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log_f, text=True, env=env, cwd=ROOT)

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log_f.flush()
            tail = self.log.read_text()[-4000:]
            raise RuntimeError(f"{self.peer} worker died:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(cmd="quit")
            except (RuntimeError, BrokenPipeError):
                pass
            self.proc.wait(timeout=60)
        self.log_f.close()


def _load_batch(z: Any, k: int) -> dict[str, np.ndarray]:
    return {name: z[f"{k}.{name}"] for name in ("masked", "mlen", "a", "alen", "apool", "toks",
                                                "roles", "segs", "mntp", "msg", "seed")}


def worker_main(args: argparse.Namespace) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to the log, the protocol keeps its own descriptor
    z = np.load(args.batches)
    batches = [_load_batch(z, k) for k in range(args.n_batches)]
    init = {k[5:]: z[k] for k in z.files if k.startswith("lora.")}
    peer = args.worker
    t0 = time.perf_counter()
    if peer == "magnet":
        import magnet
        from magnet import _C

        magnet.set_num_threads(args.threads)
        model = magnet.Model.from_pretrained(args.gguf)
        model._c.attach_lora(LORA_RANK, LORA_ALPHA, (1 << 7) - 1, LORA_SEED)
        model._c.load_lora_state_dict(init)
        meta = json.loads(str(z["meta"]))
        base_cfg = dict(meta["masking"], temperature=0.05, full_finetune=0, lr=2e-4,
                        weight_decay=0.0, clip_norm=1.0, total_steps=1_000_000, warmup_steps=0)
        threads_used = magnet.get_num_threads()
        module = magnet.__file__
    else:
        import torch
        import transformers
        from torch_magnet_step import Batch, TorchMagnetStep, attach_lora, set_dropout

        torch.set_num_threads(args.threads)
        gguf = Path(args.gguf)
        transformers.logging.set_verbosity_error()
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
        params = attach_lora(hf, LORA_RANK, LORA_ALPHA, LORA_DROPOUT, RESID_DROPOUT, init)
        threads_used = torch.get_num_threads()
        module = torch.__file__

        def to_batch(b: dict[str, np.ndarray]) -> Batch:
            bm = b["masked"].shape[0]
            return Batch(b["toks"], b["roles"], b["segs"], b["mntp"], b["msg"], bm,
                         b["a"].shape[0], b["alen"].astype(np.int64))

        tbatches = [to_batch(b) for b in batches]
    load_s = time.perf_counter() - t0
    gc.collect()
    loaded_kib = _proc_status_kib("VmRSS")
    reset = _reset_peak()
    if peer == "magnet":
        trainer = _C.Trainer(model._c, dict(base_cfg, lora_dropout=LORA_DROPOUT,
                                            resid_dropout=RESID_DROPOUT))

        def step(k: int) -> dict[str, Any]:
            b = batches[k]
            out = trainer.micro_step(b["masked"], b["mlen"], b["a"], b["alen"], b["apool"], None,
                                     None, None, 1.0, 1.0, 1.0, 0, 1.0, int(b["seed"][0]), True)
            norm, _ = trainer.apply()
            return {**out, "grad_norm": norm}
    else:
        runner = TorchMagnetStep(hf, params)

        def step(k: int) -> dict[str, Any]:
            return runner.step(tbatches[k])
    proto.write(json.dumps({"ready": True, "load_s": load_s, "threads": threads_used,
                            "module": module}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "run":
            times, tokens, losses = [], [], []
            for k in msg["batches"]:
                t = time.perf_counter()
                out = step(k)
                times.append(time.perf_counter() - t)
                tokens.append(int(out["tokens"]))
                losses.append([float(out["mntp"]), float(out["sscl"]), float(out["msg"])])
            reply: dict[str, Any] = {"times": times, "tokens": tokens, "losses": losses}
        elif msg["cmd"] == "mem":
            reply = {"loaded_kib": loaded_kib, "peak_kib": _proc_status_kib("VmHWM"),
                     "peak_reset": reset,
                     "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        elif msg["cmd"] == "check":
            # dropout off, adapters back at the shared initial values: losses and grad norm
            b = batches[0]
            if peer == "magnet":
                model._c.load_lora_state_dict(init)
                chk = _C.Trainer(model._c, dict(base_cfg, lora_dropout=0.0, resid_dropout=0.0))
                out = chk.micro_step(b["masked"], b["mlen"], b["a"], b["alen"], b["apool"], None,
                                     None, None, 1.0, 1.0, 1.0, 0, 1.0, int(b["seed"][0]), True)
                g = chk.grad_dict()
                norm = float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum())
                                         for v in g.values())))
                parts = [float(out["mntp"]), float(out["sscl"]), float(out["msg"])]
            else:
                with torch.no_grad():
                    for mod_p, name in zip(params, _lora_names(hf), strict=True):
                        mod_p.copy_(torch.as_tensor(init[name]))
                set_dropout(hf, 0.0, 0.0)
                hf.train()
                total, p = runner.losses(tbatches[0])
                total.backward()
                norm = float(torch.sqrt(sum((q.grad.double() ** 2).sum() for q in params)))
                parts = [p["mntp"], p["sscl"], p["msg"]]
            reply = {"losses": parts, "grad_norm": norm}
        else:
            reply = {"error": f"unknown command {msg['cmd']}"}
        proto.write(json.dumps(reply) + "\n")


def _lora_names(hf: Any) -> list[str]:
    from torch_magnet_step import TARGETS

    names = []
    for i in range(len(hf.model.layers)):
        for _, _, mg in TARGETS:
            names += [f"layers.{i}.{mg}.lora_A", f"layers.{i}.{mg}.lora_B"]
    return names


# ---------------------------------------------------------------------------- parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per repeat")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per peer first")
    ap.add_argument("--json", type=str, default=None, help="write all results here")
    ap.add_argument("--gguf", type=str, default=None)
    ap.add_argument("--text", type=str, default=None)
    ap.add_argument("--worker", choices=["magnet", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=str, help=argparse.SUPPRESS)
    ap.add_argument("--n-batches", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return

    info = machine()
    gguf = find_gguf(args.gguf)
    text = Path(args.text) if args.text else default_text()
    n = max(args.steps, 1)
    tmp = Path(tempfile.mkdtemp(prefix="magnet-bench-"))
    batches = tmp / "batches.npz"
    print(f"building {n} batches of {args.batch} x {args.seq} ...", file=sys.stderr)
    built = build_batches(gguf, text, n, args.batch, args.seq, tmp / "b.npz")
    with np.load(tmp / "b.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(json.dumps({"masking": built["masking"]}))
    np.savez(batches, **arrays)
    stats, sh = built["stats"], built["shape"]
    flops = [step_flops(s, sh) for s in stats]

    shapes = gemm_shapes(sh, stats[0]["positions"], stats[0]["labels"])
    print("sgemm calibration ...", file=sys.stderr)
    sg_before = sgemm_rates(shapes, args.threads)

    workers: dict[str, Worker] = {}
    load = os.getloadavg()
    try:
        for peer in ("magnet", "torch"):
            print(f"starting {peer} worker ...", file=sys.stderr)
            workers[peer] = Worker(peer, args, gguf, batches, n, tmp / f"{peer}.log")
            ready = workers[peer].read()
            print(f"  {peer}: {ready['module']} loaded in {ready['load_s']:.1f}s, "
                  f"{ready['threads']} threads", file=sys.stderr)
        order = ["magnet", "torch"]
        for peer in order:
            workers[peer].call(cmd="run", batches=[k % n for k in range(args.warmup)])
            time.sleep(0.3)
        results: dict[str, list[dict[str, Any]]] = {p: [] for p in order}
        for rep in range(args.repeats):
            for peer in (order if rep % 2 == 0 else order[::-1]):
                r = workers[peer].call(cmd="run", batches=list(range(args.steps)))
                results[peer].append(r)
                tps = sum(r["tokens"]) / sum(r["times"])
                print(f"  repeat {rep + 1}/{args.repeats} {peer:6s}: {tps:8.1f} tok/s "
                      f"({sum(r['times']) / len(r['times']):.2f} s/step)", file=sys.stderr)
                time.sleep(0.3)
        mem = {p: workers[p].call(cmd="mem") for p in order}
        check = {p: workers[p].call(cmd="check") for p in order}
    finally:
        for w in workers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    print("sgemm calibration ...", file=sys.stderr)
    sg_after = sgemm_rates(shapes, args.threads)
    sg = [dict(b, gflops=max(b["gflops"], a["gflops"])) for b, a in zip(sg_before, sg_after,
                                                                         strict=True)]
    sgs = summarize_sgemm(sg)

    conv_flops = sum(f[0] for f in flops[:args.steps])
    exec_flops = sum(f[1] for f in flops[:args.steps])
    summary: dict[str, Any] = {}
    for peer in order:
        secs = [sum(r["times"]) for r in results[peer]]
        tps = [sum(r["tokens"]) / sum(r["times"]) for r in results[peer]]
        summary[peer] = {
            "tokens_per_s_median": statistics.median(tps), "tokens_per_s_best": max(tps),
            "tokens_per_s_all": tps,
            "step_s_median": statistics.median(secs) / args.steps,
            "gflops_median": conv_flops / statistics.median(secs) / 1e9,
            "gflops_executed_median": exec_flops / statistics.median(secs) / 1e9,
            "losses_first_repeat": results[peer][0]["losses"],
            "loaded_mib": (mem[peer]["loaded_kib"] or 0) / 1024,
            "peak_mib": (mem[peer]["peak_kib"] or 0) / 1024,
            "peak_reset": mem[peer]["peak_reset"],
            "ru_maxrss_mib": mem[peer]["ru_maxrss_kib"] / 1024,
            "check": check[peer],
        }
    ratio = summary["magnet"]["tokens_per_s_median"] / summary["torch"]["tokens_per_s_median"]
    pair = [m / t for m, t in zip(summary["magnet"]["tokens_per_s_all"],
                                  summary["torch"]["tokens_per_s_all"], strict=True)]
    from importlib.metadata import version

    report = {
        "machine": info, "threads": args.threads, "batch": args.batch, "seq": args.seq,
        "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
        "loadavg_before": load, "loadavg_after": load_after,
        "gguf": str(gguf), "text": str(text), "batches": stats, "model_shape": sh,
        "flops_per_step_6x": [f[0] for f in flops],
        "flops_per_step_executed": [f[1] for f in flops],
        "sgemm": sg, "sgemm_summary": sgs, "peers": summary, "ratio_median": ratio,
        "ratio_paired_median": statistics.median(pair),
        "versions": {"torch": version("torch"), "transformers": version("transformers"),
                     "python": sys.version.split()[0]},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(render(report))


def render(r: dict[str, Any]) -> str:
    m, t = r["peers"]["magnet"], r["peers"]["torch"]
    s0 = r["batches"][0]
    info = r["machine"]
    sgs = r["sgemm_summary"]
    lines = [
        f"Machine: {info.get('cpu')}, {info.get('cores')} cores ({info.get('cpus')} CPUs), "
        f"threads {r['threads']}; load average {r['loadavg_before'][0]:.1f} before, "
        f"{r['loadavg_after'][0]:.1f} after",
        f"Step: magnet preset, SmolLM2-135M f32, LoRA r=16 a=32 on q,k,v,o,gate,up,down, batch "
        f"{r['batch']} x seq {r['seq']} + 2 x {r['batch']} SSCL rows: {s0['rows']} x {s0['T']} "
        f"positions, {s0['tokens']} real tokens, {s0['labels']} labelled (batch 0); "
        f"{r['repeats']} interleaved repeats of {r['steps']} steps after {r['warmup']} warm-up; "
        f"torch {r['versions']['torch']}, transformers {r['versions']['transformers']}",
        "",
        "| | magnet | PyTorch (transformers + LoRA) | magnet / PyTorch |",
        "|---|---:|---:|---:|",
        f"| training tokens/s, median | {m['tokens_per_s_median']:.1f} | "
        f"{t['tokens_per_s_median']:.1f} | {r['ratio_median']:.2f} "
        f"(paired median {r['ratio_paired_median']:.2f}) |",
        f"| training tokens/s, best | {m['tokens_per_s_best']:.1f} | "
        f"{t['tokens_per_s_best']:.1f} | {m['tokens_per_s_best'] / t['tokens_per_s_best']:.2f} |",
        f"| seconds per step, median | {m['step_s_median']:.2f} | {t['step_s_median']:.2f} | |",
        f"| RSS after load + adapters (MiB) | {m['loaded_mib']:.0f} | {t['loaded_mib']:.0f} | |",
        f"| peak RSS while training, absolute (MiB) | {m['peak_mib']:.0f} | {t['peak_mib']:.0f} | "
        f"{m['peak_mib'] / t['peak_mib']:.2f} |",
        f"| peak RSS while training, delta over loaded (MiB) | "
        f"{m['peak_mib'] - m['loaded_mib']:.0f} | {t['peak_mib'] - t['loaded_mib']:.0f} | "
        f"{(m['peak_mib'] - m['loaded_mib']) / max(t['peak_mib'] - t['loaded_mib'], 1):.2f} |",
        f"| model GFLOP/s (6x convention) | {m['gflops_median']:.1f} | {t['gflops_median']:.1f} "
        f"| |",
        f"| executed GFLOP/s (frozen base) | {m['gflops_executed_median']:.1f} | "
        f"{t['gflops_executed_median']:.1f} | |",
        f"| executed GFLOP/s as % of sgemm peak {sgs['peak']:.1f} / mix {sgs['mix']:.1f} | "
        f"{100 * m['gflops_executed_median'] / sgs['peak']:.0f}% / "
        f"{100 * m['gflops_executed_median'] / sgs['mix']:.0f}% | "
        f"{100 * t['gflops_executed_median'] / sgs['peak']:.0f}% / "
        f"{100 * t['gflops_executed_median'] / sgs['mix']:.0f}% | |",
        "| check (dropout off, batch 0): mntp / sscl / msg | "
        + " / ".join(f"{x:.4f}" for x in m["check"]["losses"]) + " | "
        + " / ".join(f"{x:.4f}" for x in t["check"]["losses"]) + " | |",
        f"| check: LoRA gradient norm | {m['check']['grad_norm']:.5g} | "
        f"{t['check']['grad_norm']:.5g} | |",
        "",
        "sgemm (scipy_openblas32, GFLOP/s): " + ", ".join(
            f"{g['name']} {g['M']}x{g['N']}x{g['K']}: {g['gflops']:.1f}" for g in r["sgemm"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
