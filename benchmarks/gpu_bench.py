"""GPU benchmark: magnet's CUDA backend against PyTorch on the same GPU, in one run.

Run from the repository root after building magnet in place with the CUDA backend::

    MAGNET_CUDA=1 python3 setup.py build_ext --inplace -j 16
    python3 benchmarks/gpu_bench.py --out bench.json

``--quick`` uses tiny models (a dry run); ``--device cpu`` runs both engines on the CPU in
float32 (a dry run of the whole script on a machine without a GPU); ``--budget-s`` bounds the
whole run (default 240 s; the step counts shrink to fit, never below ``--min-steps``).

Three sections, each in its own subprocess (a crash or an out-of-memory error in one engine
leaves the other numbers; a section that runs out of GPU memory is retried once at half the
batch, for both engines):

- ``train-small`` / ``train-large``: the ``magnet`` preset training step (as
  ``magnet/adapt.py`` and ``benchmarks/adapt.py`` drive it: ``_C.Trainer.micro_step`` +
  ``apply``; MNTP + SSCL + MSG, LoRA r=16 alpha=32 on q, k, v, o, gate, up, down, LoRA dropout
  0.05, residual dropout 0.1, AdamW, clipping at 1.0) on random weights of
  (small) the SmolLM2-135M architecture (hidden 576, 30 layers, 9 heads, 3 KV heads,
  intermediate 1536, vocabulary 49152, tied embeddings; 134.5M parameters) and
  (large) a Llama-3.2-1B-like architecture with a 32000-token vocabulary (hidden 2048, 16
  layers, 32 heads, 8 KV heads, intermediate 8192, untied head; 1.10B parameters, 973M in the
  layers' projections). Sequence length 512; batch 32 (small) and 16 (large) chunks, plus twice
  as many SSCL sentences (instruction + 64 tokens + EOS: 77 tokens), so a step holds 21,312
  (small) / 10,656 (large) real tokens (PyTorch: 43 / 22 rows of 512) and 17.2 / 65.5 model
  TFLOP (6x convention below). The tokens are random ids. The batches leave room on an 80 GB
  card (PyTorch's activations at these sizes are an estimated 40 / 45 GB); a section that runs
  out of memory is retried at half the batch.
  magnet: ``Model.to(device, precision="bf16")`` (bf16 matrix products, float32 master weights).
  PyTorch: ``benchmarks/torch_magnet_step.py`` on a transformers ``LlamaForCausalLM`` holding
  the same weights and LoRA initial values, float32 weights under ``torch.autocast(bf16)``,
  SDPA attention with the unified rule as an explicit additive mask, fused AdamW, fed the same
  masked batches (``magnet._C.masked_view``, the trainer's seed and stream); its SSCL sentences
  are packed several to a row as separate segments, as magnet's trainer packs them (so neither
  engine computes on padding rows).
  Timing: ``--warmup`` untimed steps, then at least ``--min-steps`` timed optimizer steps, each
  between ``torch.cuda.synchronize()`` calls (magnet's C calls return when the GPU is done;
  the synchronisation is belt and braces); tokens/s is the median over steps of real tokens /
  step time. Model FLOP utilisation: (6 x P_mm x tokens + attention) / step time / peak, with
  P_mm the per-layer projection and LoRA weights, the LM head counted on the labelled positions
  only (neither engine computes logits elsewhere), attention 12 x layers x heads x head_dim x
  sum of squared sequence lengths (forward + backward); peak = the card's dense bf16 rate
  (H100 SXM and H200: 989 TFLOP/s; the name comes from ``torch.cuda.get_device_name``;
  ``--peak-tflops`` overrides). With the base frozen the weight gradients of the base are not
  computed, so the FLOPs executed are 4 x instead of 6 x on the base: "executed utilisation"
  reports that count. After timing each engine runs a check step (dropout off, adapters at the
  shared initial values, batch 0): its three losses and LoRA gradient norm, to show both ran
  the same step; and magnet's logits on a short input are compared with PyTorch's float32 ones.
- ``decode``: greedy decoding tokens/s at batch 1 and 32 on random SmolLM2-135M-architecture
  weights, ``--new-tokens`` (128) new tokens after a 32-token prompt of fixed random ids, every
  row decoding the full count: magnet ``magnet.generation.generate_ids`` (bf16) against
  transformers ``generate`` (the same weights cast to bf16, ``do_sample=False``,
  ``min_new_tokens=max_new_tokens``); the time of the whole call (prefill included), median of
  ``--repeats`` after one warm-up.

Device memory: the peak of the device's used memory (NVML, sampled every 10 ms) while each
engine trains, and PyTorch's own ``max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's magnet (built in place) first

LORA_RANK, LORA_ALPHA, LORA_SEED, LORA_TARGETS = 16, 32.0, 0, (1 << 7) - 1
LORA_DROPOUT, RESID_DROPOUT = 0.05, 0.1
MASK_ID, BOS_ID, EOS_ID = 0, 1, 2
INSTRUCTION_TOKENS = 12          # BOS + 11 ids, the length of magnet's default instruction
PROMPT_TOKENS = 32
DECODE_BATCHES = (1, 32)
OOM_EXIT = 3
SECTIONS = ("train-small", "train-large", "decode")
SHARES = {"train-small": 0.3, "train-large": 0.45, "decode": 0.25}
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring, first match wins
PEAK_BF16_TFLOPS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0),
                    ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("A10G", 70.0))


@dataclass(frozen=True)
class Arch:
    """A LLaMA-layout architecture with random weights."""

    label: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool
    rope_theta: float
    max_positions: int

    def config(self) -> Any:
        """The ``magnet.ModelConfig`` of this architecture (BOS 1, EOS 2)."""
        from magnet.config import ModelConfig

        return ModelConfig(arch="llama", vocab_size=self.vocab, hidden_size=self.hidden,
                           num_layers=self.layers, num_heads=self.heads,
                           num_kv_heads=self.kv_heads, head_dim=self.hidden // self.heads,
                           intermediate_size=self.intermediate, max_positions=self.max_positions,
                           norm_eps=1e-5, rope_theta=self.rope_theta,
                           tie_word_embeddings=self.tied, bos_token_id=BOS_ID,
                           eos_token_id=EOS_ID, model_type="llama")


ARCHS = {
    "small": Arch("SmolLM2-135M architecture", 49152, 576, 30, 9, 3, 1536, True, 100000.0, 8192),
    "large": Arch("Llama 1B (Llama-3.2-1B shape, vocab 32000)", 32000, 2048, 16, 32, 8, 8192,
                  False, 500000.0, 4096),
    "small-quick": Arch("tiny stand-in for SmolLM2-135M", 512, 64, 2, 4, 2, 128, True, 100000.0,
                        1024),
    "large-quick": Arch("small stand-in for Llama 1B", 1024, 128, 3, 4, 2, 256, False, 500000.0,
                        1024),
}


# ---------------------------------------------------------------------------- helpers


def peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak of the device called ``name`` and where the number came from."""
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"dense bf16 peak of {key} (matched in {name!r})"
    return None, f"no known bf16 peak for {name!r} (pass --peak-tflops)"


def is_oom(e: BaseException) -> bool:
    """An out-of-memory error of either engine."""
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "out of memory" in str(e).lower())


class MemoryPeak:
    """Peak of the device's used memory (MiB) while the block runs, from NVML samples; None
    where NVML is missing (the CPU, or no nvidia-ml-py)."""

    def __init__(self, device_index: int | None) -> None:
        self.peak_mib: float | None = None
        self.base_mib: float | None = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device_index is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._nvml = pynvml
        except Exception:  # nvidia-ml-py missing or no driver: no memory numbers
            self._handle = None

    def _used(self) -> float:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mib = max(self.peak_mib or 0.0, self._used())

    def __enter__(self) -> MemoryPeak:
        if self._handle is not None:
            self.base_mib = self.peak_mib = self._used()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib or 0.0, self._used())


def time_steps(step: Callable[[int], dict[str, Any]], n_batches: int, warmup: int, steps: int,
               min_steps: int, deadline: float, sync: Callable[[], None],
               progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``warmup`` untimed then timed steps, each between two ``sync()`` calls: as many of
    ``steps`` as fit before ``deadline`` (``time.perf_counter()``), at least ``min_steps``
    unless even those would not fit (then as many as fit, at least one, and ``short`` is
    set). ``progress`` receives the partial results after every step."""
    res: dict[str, Any] = {"warmup_s": [], "times_s": [], "tokens": [], "batches": [],
                           "losses": []}
    for i in range(warmup):
        sync()
        t = time.perf_counter()
        step(i % n_batches)
        sync()
        res["warmup_s"].append(time.perf_counter() - t)
        if progress is not None:
            progress(res)
        # a slow engine: one warm-up step is enough, keep the time for timed steps
        if res["warmup_s"][-1] > 0.1 * (deadline - time.perf_counter()):
            break
    n = steps
    if res["warmup_s"]:
        fit = int((deadline - time.perf_counter()) / max(res["warmup_s"][-1], 1e-6))
        n = max(min_steps, min(steps, fit)) if fit >= min_steps else max(fit, 1)
        res["short"] = n < min_steps
    for i in range(n):
        k = (len(res["warmup_s"]) + i) % n_batches
        sync()
        t = time.perf_counter()
        out = step(k)
        sync()
        res["times_s"].append(time.perf_counter() - t)
        res["tokens"].append(int(out["tokens"]))
        res["losses"].append([float(out["mntp"]), float(out["sscl"]), float(out["msg"])])
        res["batches"].append(k)
        if progress is not None:
            progress(res)
    tps = [tk / dt for tk, dt in zip(res["tokens"], res["times_s"], strict=True)]
    res.update(step_s_median=statistics.median(res["times_s"]),
               tokens_per_s=statistics.median(tps), tokens_per_s_all=tps)
    return res


# ---------------------------------------------------------------------------- models, batches


def build_models(arch: Arch, torch_device: str, seed: int = 0) -> tuple[Any, Any]:
    """(transformers LlamaForCausalLM in float32 on ``torch_device``, magnet Model on the CPU)
    holding the same random weights (transformers' initialisation, normal(0, 0.02))."""
    import torch
    import transformers

    import magnet
    from magnet.formats.huggingface import config_to_hf, tensors_from_hf

    transformers.logging.set_verbosity_error()
    mcfg = arch.config()
    hf_cfg = transformers.LlamaConfig(**config_to_hf(mcfg))
    torch.manual_seed(seed)
    with torch.device(torch_device):
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa",
                                                           dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in hf.state_dict().items()}
    model = magnet.Model(mcfg, tensors_from_hf(mcfg, state))
    del state
    gc.collect()
    return hf, model


def make_batches(arch: Arch, batch: int, seq: int, n: int, seed: int = 1234
                 ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, int]]]:
    """``n`` micro-batches of ``batch`` random chunks of ``seq`` tokens (BOS first), built as
    magnet's adapt() builds them (``benchmarks/adapt.py``'s ``combine_rows``)."""
    from adapt import combine_rows

    rng = np.random.default_rng(seed)
    instr = np.concatenate([[BOS_ID], rng.integers(3, arch.vocab, INSTRUCTION_TOKENS - 1)])
    masking = {"mask_token_id": MASK_ID, "use_spans": 1, "all_span_frac": 0.25}
    out, stats = [], []
    for k in range(n):
        chunks = [np.concatenate([[BOS_ID], rng.integers(3, arch.vocab, seq - 1)]).astype(
            np.int32) for _ in range(batch)]
        arrays, st = combine_rows(chunks, instr.astype(np.int32), EOS_ID, masking, arch.vocab,
                                  seed + k)
        out.append(arrays)
        stats.append(st)
    return out, stats


def packed_torch_batch(b: dict[str, np.ndarray]) -> Any:
    """The PyTorch peer's batch with the SSCL sentences packed several to a row (next fit),
    each its own segment with positions from 0, as magnet's trainer packs them."""
    from torch_magnet_step import Batch

    bm = b["masked"].shape[0]
    bs = b["a"].shape[0]
    T = b["toks"].shape[1]
    alen = b["alen"].astype(np.int64)
    rows: list[list[tuple[int, int]]] = []   # per row: (sentence, start)
    used: list[int] = []
    for i in range(2 * bs):
        n = int(alen[i % bs])
        if not rows or used[-1] + n > T:
            rows.append([])
            used.append(0)
        rows[-1].append((i, used[-1]))
        used[-1] += n
    R = bm + len(rows)
    toks = np.zeros((R, T), np.int64)
    roles = np.zeros((R, T), np.uint8)
    segs = np.full((R, T), -1, np.int32)
    pos = np.zeros((R, T), np.int64)
    mntp = np.full((R, T), -100, np.int64)
    msg = np.full((R, T), -100, np.int64)
    for name, arr in (("toks", toks), ("roles", roles), ("segs", segs), ("mntp", mntp),
                      ("msg", msg)):
        arr[:bm] = b[name][:bm]
    real = segs[:bm] >= 0
    pos[:bm] = (np.cumsum(real, axis=1) - 1).clip(min=0) * real
    pool_r = np.zeros(2 * bs, np.int64)
    pool_c = np.zeros(2 * bs, np.int64)
    for r, row in enumerate(rows):
        for s, (i, start) in enumerate(row):
            n = int(alen[i % bs])
            toks[bm + r, start:start + n] = b["a"][i % bs, :n]
            segs[bm + r, start:start + n] = s
            pos[bm + r, start:start + n] = np.arange(n)
            pool_r[i], pool_c[i] = bm + r, start + n - 1
    return Batch(toks, roles, segs, mntp, msg, bm, bs, alen, positions=pos,
                 sscl_pool=(pool_r, pool_c))


# ---------------------------------------------------------------------------- sections


class Section:
    """A section's results, written to the part file after every stage."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.part: dict[str, Any] = {"section": args.section}
        self.path = Path(args.part)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.part, indent=1))
        os.replace(tmp, self.path)

    def progress(self, engine: str) -> Callable[[dict[str, Any]], None]:
        """A callback saving an engine's partial step times (kept if the section is killed)."""

        def save_partial(res: dict[str, Any]) -> None:
            self.part[engine] = {"partial": True, **res}
            self.save()

        return save_partial


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    """Versions, thread counts and, on a GPU, its name, memory and multiprocessors."""
    import platform
    from importlib.metadata import version

    import torch

    import magnet

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": version("transformers"), "numpy": np.__version__,
        "magnet_module": magnet.__file__, "cuda_available_torch": torch.cuda.is_available(),
        "cuda_available_magnet": magnet.cuda_is_available(),
        "threads_torch": torch.get_num_threads(), "threads_magnet": magnet.get_num_threads(),
    }
    if args.torch_device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_mib=props.total_memory / 2**20,
                   sms=props.multi_processor_count, torch_cuda=torch.version.cuda)
    return env


def _sync_fn(torch_device: str) -> Callable[[], None]:
    """``torch.cuda.synchronize`` on a GPU (it waits for magnet's work on the device too, in
    the same primary context), else nothing."""
    import torch

    if torch_device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _device_index(args: argparse.Namespace) -> int | None:
    """The GPU's index for NVML, None on the CPU."""
    if not args.torch_device.startswith("cuda"):
        return None
    _, _, idx = args.torch_device.partition(":")
    return int(idx or 0)


def train_section(sec: Section) -> None:
    """Both engines' training step on one architecture."""
    import torch
    from adapt import model_shape, step_flops
    from torch_magnet_step import TorchMagnetStep, attach_lora, set_dropout

    from magnet import _C

    args = sec.args
    size = sec.args.section.split("-")[1]
    arch = ARCHS[f"{size}-quick" if args.quick else size]
    batch = args.batch or (args.batch_small if size == "small" else args.batch_large)
    seq = args.seq
    part = sec.part
    part.update(arch=asdict(arch), batch=batch, seq=seq, env=_environment(args))
    sync = _sync_fn(args.torch_device)
    t0 = time.perf_counter()
    hf, model = build_models(arch, args.torch_device)
    mcfg = model.config
    shape = model_shape(mcfg)
    part.update(params=model.num_parameters, shape=shape,
                params_in_layers=shape["L"] * shape["P_layer"])
    batches, stats = make_batches(arch, batch, seq, args.n_batches)
    flops = [step_flops(s, shape) for s in stats]
    part.update(batch_stats=stats, flops_6x=[f[0] for f in flops],
                flops_executed=[f[1] for f in flops], setup_s=time.perf_counter() - t0)
    tbatches = [packed_torch_batch(b) for b in batches]
    part["torch_rows"] = [int(tb.tokens.shape[0]) for tb in tbatches]
    rng = np.random.default_rng(7)
    check_ids = rng.integers(3, arch.vocab, size=(2, 16))
    with torch.no_grad():
        ref_logits = hf(torch.as_tensor(check_ids, device=args.torch_device)).logits.float()
        ref_logits = ref_logits.cpu().numpy()
    model._c.attach_lora(LORA_RANK, LORA_ALPHA, LORA_TARGETS, LORA_SEED)
    init = model._c.lora_state_dict()
    sec.save()
    dev_index = _device_index(args)
    autocast = torch.bfloat16 if args.precision == "bf16" else None

    def flops_rates(res: dict[str, Any]) -> None:
        conv = [flops[k][0] / dt for k, dt in zip(res["batches"], res["times_s"], strict=True)]
        exe = [flops[k][1] / dt for k, dt in zip(res["batches"], res["times_s"], strict=True)]
        res["model_flops_per_s"] = statistics.median(conv)
        res["executed_flops_per_s"] = statistics.median(exe)

    # ---- PyTorch first (a crash of the engine under test then leaves its numbers)
    try:
        if args.torch_device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        params = attach_lora(hf, LORA_RANK, LORA_ALPHA, LORA_DROPOUT, RESID_DROPOUT, init)
        runner = TorchMagnetStep(hf, params, autocast_dtype=autocast)
        with MemoryPeak(dev_index) as mem:
            res = time_steps(lambda k: runner.step(tbatches[k]), len(tbatches), args.warmup,
                             args.steps, args.min_steps,
                             time.perf_counter() + 0.45 * (args.deadline - time.time()), sync,
                             sec.progress("torch"))
        flops_rates(res)
        res["device_memory_peak_mib"] = mem.peak_mib
        res["device_memory_base_mib"] = mem.base_mib
        if args.torch_device.startswith("cuda"):
            res["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        with torch.no_grad():
            for p_, name in zip(params, _lora_names(len(hf.model.layers)), strict=True):
                p_.copy_(torch.as_tensor(init[name]))
        set_dropout(hf, 0.0, 0.0)
        hf.train()
        for p_ in params:
            p_.grad = None
        total, parts = runner.losses(tbatches[0])
        total.backward()
        norm = float(torch.sqrt(sum((q.grad.double() ** 2).sum() for q in params)))
        res["check"] = {"losses": [parts["mntp"], parts["sscl"], parts["msg"]],
                        "grad_norm": norm}
        part["torch"] = res
    except Exception as e:
        part["torch"] = {"error": f"{type(e).__name__}: {e}", "oom": is_oom(e),
                         "traceback": traceback.format_exc()[-3000:]}
        print(part["torch"]["traceback"], file=sys.stderr)
    sec.save()
    if part["torch"].get("oom"):
        sys.exit(OOM_EXIT)  # retried at half the batch: no point timing magnet at this one
    runner = params = hf = None
    gc.collect()
    if args.torch_device.startswith("cuda"):
        torch.cuda.empty_cache()

    # ---- magnet
    try:
        model.to(args.device, precision=args.precision)
        part["magnet_device"] = [model.device, model.precision]
        got = model.logits(check_ids)
        part["logits_check"] = {
            "max_abs_diff": float(np.abs(got - ref_logits).max()),
            "rel_to_max_logit": float(np.abs(got - ref_logits).max()
                                      / max(np.abs(ref_logits).max(), 1e-6)),
            "argmax_agree": float((got.argmax(-1) == ref_logits.argmax(-1)).mean())}
        base = dict(mask_token_id=MASK_ID, use_spans=1, all_span_frac=0.25, temperature=0.05,
                    full_finetune=0, lr=2e-4, weight_decay=0.0, clip_norm=1.0,
                    total_steps=1_000_000, warmup_steps=0)
        trainer = _C.Trainer(model._c, dict(base, lora_dropout=LORA_DROPOUT,
                                            resid_dropout=RESID_DROPOUT))

        def step(k: int) -> dict[str, Any]:
            b = batches[k]
            out = trainer.micro_step(b["masked"], b["mlen"], b["a"], b["alen"], b["apool"],
                                     None, None, None, 1.0, 1.0, 1.0, 0, 1.0, int(b["seed"][0]),
                                     True)
            norm, _ = trainer.apply()
            return {**out, "grad_norm": norm}

        with MemoryPeak(dev_index) as mem:
            res = time_steps(step, len(batches), args.warmup, args.steps, args.min_steps,
                             time.perf_counter() + max(args.deadline - time.time() - 10, 0), sync,
                             sec.progress("magnet"))
        flops_rates(res)
        res["device_memory_peak_mib"] = mem.peak_mib
        res["device_memory_base_mib"] = mem.base_mib
        trainer = None
        gc.collect()
        model._c.load_lora_state_dict(init)
        chk = _C.Trainer(model._c, dict(base, lora_dropout=0.0, resid_dropout=0.0))
        b = batches[0]
        out = chk.micro_step(b["masked"], b["mlen"], b["a"], b["alen"], b["apool"], None, None,
                             None, 1.0, 1.0, 1.0, 0, 1.0, int(b["seed"][0]), True)
        g = chk.grad_dict()
        norm = float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values())))
        res["check"] = {"losses": [float(out["mntp"]), float(out["sscl"]), float(out["msg"])],
                        "grad_norm": norm}
        part["magnet"] = res
    except Exception as e:
        part["magnet"] = {"error": f"{type(e).__name__}: {e}", "oom": is_oom(e),
                          "traceback": traceback.format_exc()[-3000:]}
        print(part["magnet"]["traceback"], file=sys.stderr)
    sec.save()
    if part["torch"].get("oom") or part["magnet"].get("oom"):
        sys.exit(OOM_EXIT)


def _lora_names(layers: int) -> list[str]:
    from torch_magnet_step import TARGETS

    return [f"layers.{i}.{mg}.lora_{ab}" for i in range(layers) for _, _, mg in TARGETS
            for ab in ("A", "B")]


def decode_section(sec: Section) -> None:
    """Greedy decoding tokens/s, batch 1 and 32: magnet generate_ids vs transformers generate."""
    import torch

    from magnet.generation import Sampling, generate_ids

    args = sec.args
    arch = ARCHS["small-quick" if args.quick else "small"]
    n_new = args.new_tokens
    part = sec.part
    part.update(arch=asdict(arch), new_tokens=n_new, prompt_tokens=PROMPT_TOKENS,
                batches=list(DECODE_BATCHES), repeats=args.repeats, env=_environment(args))
    sync = _sync_fn(args.torch_device)
    hf, model = build_models(arch, args.torch_device)
    if args.precision == "bf16":
        hf.to(torch.bfloat16)
    hf.eval()
    rng = np.random.default_rng(11)
    prompts = {B: rng.integers(3, arch.vocab, size=(B, PROMPT_TOKENS)) for B in DECODE_BATCHES}

    def median_time(fn: Callable[[], Any], repeats: int, share: float
                    ) -> tuple[float, list[float], Any]:
        """Median of ``repeats`` timed calls after one warm-up, fewer (at least one) where
        they would not fit in ``share`` of the time left before the deadline."""
        end = time.perf_counter() + share * max(args.deadline - time.time(), 0.0)
        sync()
        t = time.perf_counter()
        out = fn()  # warm-up
        sync()
        fit = int((end - time.perf_counter()) / max(time.perf_counter() - t, 1e-6))
        times = []
        for _ in range(max(1, min(repeats, fit))):
            sync()
            t = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), times, out

    torch_out: dict[int, list[int]] = {}
    part["torch"] = {}
    try:
        for B in DECODE_BATCHES:
            ids = torch.as_tensor(prompts[B], device=args.torch_device)

            def hf_generate(ids: torch.Tensor = ids) -> torch.Tensor:
                with torch.no_grad():
                    return hf.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=n_new, min_new_tokens=n_new,
                                       do_sample=False, pad_token_id=0)

            med, times, out = median_time(hf_generate, args.repeats,
                                          0.2 if B == DECODE_BATCHES[0] else 0.25)
            torch_out[B] = out[0, PROMPT_TOKENS:].tolist()
            part["torch"][str(B)] = {"seconds": med, "times_s": times,
                                     "tokens_per_s": B * n_new / med}
            sec.save()
    except Exception as e:
        part["torch"]["error"] = f"{type(e).__name__}: {e}"
        print(traceback.format_exc(), file=sys.stderr)
    sec.save()
    hf = None
    gc.collect()
    if args.torch_device.startswith("cuda"):
        torch.cuda.empty_cache()
    part["magnet"] = {}
    try:
        model.to(args.device, precision=args.precision)
        for B in DECODE_BATCHES:
            plist = prompts[B].tolist()
            med, times, ours = median_time(
                lambda p=plist: generate_ids(model, p, n_new, Sampling(), eos_id=-1),
                args.repeats, 0.5 if B == DECODE_BATCHES[0] else 0.9)
            entry: dict[str, Any] = {"seconds": med, "times_s": times,
                                     "tokens_per_s": B * n_new / med,
                                     "all_rows_full": all(len(r) == n_new for r in ours)}
            if B in torch_out:
                same = 0
                for x, y in zip(ours[0], torch_out[B], strict=False):
                    if x != y:
                        break
                    same += 1
                entry["greedy_prefix_agree_row0"] = same
            part["magnet"][str(B)] = entry
            sec.save()
    except Exception as e:
        part["magnet"]["error"] = f"{type(e).__name__}: {e}"
        print(traceback.format_exc(), file=sys.stderr)
    sec.save()


# ---------------------------------------------------------------------------- parent


def _child_args(args: argparse.Namespace, section: str, part: Path, deadline: float,
                batch: int | None) -> list[str]:
    """The command line of one section's subprocess."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", section, "--part",
           str(part), "--deadline", f"{deadline:.3f}", "--device", args.device,
           "--torch-device", args.torch_device, "--precision", args.precision,
           "--seq", str(args.seq), "--batch-small", str(args.batch_small),
           "--batch-large", str(args.batch_large), "--steps", str(args.steps),
           "--min-steps", str(args.min_steps), "--warmup", str(args.warmup),
           "--n-batches", str(args.n_batches), "--new-tokens", str(args.new_tokens),
           "--repeats", str(args.repeats)]
    if batch:
        cmd += ["--batch", str(batch)]
    if args.quick:
        cmd.append("--quick")
    return cmd


def run_sections(args: argparse.Namespace) -> dict[str, Any]:
    """Each section in its own process, inside the time budget; results by section."""
    t_end = time.time() + args.budget_s
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="magnet-gpubench-"))
    todo = [s for s in SECTIONS if s in args.sections]
    for i, section in enumerate(todo):
        share_left = sum(SHARES[s] for s in todo[i:])
        batch: int | None = None
        attempts = []
        while True:
            now = time.time()
            left = t_end - now
            reserve = 20.0 * (len(todo) - i - 1)   # the later sections' minimum
            if left - reserve < 15:
                results[section] = {"section": section, "skipped": "time budget spent",
                                    "attempts": attempts}
                break
            soft = now + max((left - reserve) * SHARES[section] / share_left, 15.0)
            hard = left - reserve
            part = tmp / f"{section}.json"
            part.unlink(missing_ok=True)
            print(f"[gpu_bench] {section}: soft deadline {soft - now:.0f} s, hard {hard:.0f} s"
                  + (f", batch {batch}" if batch else ""), file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(_child_args(args, section, part, soft, batch),
                                      timeout=hard, cwd=ROOT)
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            wall = time.perf_counter() - t0
            res = json.loads(part.read_text()) if part.is_file() else {"section": section}
            res["returncode"] = rc
            res["wall_s"] = wall
            attempts.append({"batch": res.get("batch", batch), "returncode": rc, "wall_s": wall})
            res["attempts"] = attempts
            results[section] = res
            print(f"[gpu_bench] {section}: exit {rc} after {wall:.0f} s", file=sys.stderr,
                  flush=True)
            if rc == OOM_EXIT and section.startswith("train") and len(attempts) < 3:
                prev = int(res.get("batch") or 0)
                if prev >= 2:
                    batch = prev // 2
                    print(f"[gpu_bench] {section}: out of memory, retrying at batch {batch}",
                          file=sys.stderr, flush=True)
                    continue
            break
    return results


def summarize(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The report: environment, peak, per-section numbers and the issue's criteria."""
    env = next((r["env"] for r in results.values() if "env" in r), {})
    gpu = env.get("gpu", "")
    peak, peak_source = (peak_tflops(gpu, args.peak_tflops) if gpu
                         else (args.peak_tflops, "--peak-tflops" if args.peak_tflops
                               else "no GPU: no peak"))
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "func"},
                              "env": env, "peak_tflops": peak, "peak_source": peak_source,
                              "sections": results}
    # criterion -> True / False, or None where it could not be measured
    crit: dict[str, bool | None] = {}
    for sec in ("train-small", "train-large"):
        if sec not in results:
            continue
        r = results[sec]
        m, t = r.get("magnet", {}), r.get("torch", {})
        for eng in (m, t):
            _finish_partial(eng, r)
        name = f"{sec}: magnet tokens/s >= PyTorch"
        crit[name] = None
        if "tokens_per_s" in m and "tokens_per_s" in t:
            r["ratio"] = m["tokens_per_s"] / t["tokens_per_s"]
            crit[name] = r["ratio"] >= 1.0
        for eng in (m, t):
            if "model_flops_per_s" in eng and peak:
                eng["mfu"] = eng["model_flops_per_s"] / (peak * 1e12)
                eng["executed_utilisation"] = eng["executed_flops_per_s"] / (peak * 1e12)
        if sec == "train-large":
            crit["train-large: magnet MFU >= 40%"] = m["mfu"] >= 0.40 if "mfu" in m else None
    if "decode" in results:
        dec = results["decode"]
        for B in DECODE_BATCHES:
            m = dec.get("magnet", {}).get(str(B), {})
            t = dec.get("torch", {}).get(str(B), {})
            name = f"decode batch {B}: magnet tokens/s >= transformers"
            crit[name] = None
            if "tokens_per_s" in m and "tokens_per_s" in t:
                dec[f"ratio_{B}"] = m["tokens_per_s"] / t["tokens_per_s"]
                crit[name] = dec[f"ratio_{B}"] >= 1.0
    report["criteria"] = crit
    report["failures"] = failures(results)
    return report


def failures(results: dict[str, Any]) -> list[str]:
    """What did not run to the end: sections that were skipped, killed or crashed, engines
    that raised."""
    out = []
    for name, r in results.items():
        if "skipped" in r:
            out.append(f"{name}: skipped ({r['skipped']})")
        elif r.get("returncode") not in (0, OOM_EXIT):
            out.append(f"{name}: exit {r.get('returncode')}")
        for eng in ("magnet", "torch"):
            e = r.get(eng, {})
            if isinstance(e, dict) and "error" in e:
                out.append(f"{name} / {eng}: {e['error'][:200]}")
            elif isinstance(e, dict) and e.get("partial"):
                out.append(f"{name} / {eng}: killed after {len(e.get('times_s', []))} timed steps")
        if r.get("returncode") == OOM_EXIT:
            out.append(f"{name}: out of memory at batch {r.get('batch')}")
    return out


def _finish_partial(eng: dict[str, Any], r: dict[str, Any]) -> None:
    """Medians of an engine whose section was killed after some timed steps."""
    if not eng.get("partial") or not eng.get("times_s") or "tokens_per_s" in eng:
        return
    tps = [tk / dt for tk, dt in zip(eng["tokens"], eng["times_s"], strict=True)]
    eng.update(step_s_median=statistics.median(eng["times_s"]),
               tokens_per_s=statistics.median(tps), tokens_per_s_all=tps, short=True)
    f6, fx = r.get("flops_6x"), r.get("flops_executed")
    if f6 and fx:
        eng["model_flops_per_s"] = statistics.median(
            f6[k] / dt for k, dt in zip(eng["batches"], eng["times_s"], strict=True))
        eng["executed_flops_per_s"] = statistics.median(
            fx[k] / dt for k, dt in zip(eng["batches"], eng["times_s"], strict=True))


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else "n/a"


def render(report: dict[str, Any]) -> str:
    """A markdown table of the report."""
    env, secs = report["env"], report["sections"]
    a = report["args"]
    where = env.get("gpu") or f"no GPU visible to PyTorch (magnet device {a['device']})"
    lines = [f"Device: {where}; magnet {a['device']} {a['precision']}, PyTorch "
             f"{a['torch_device']}" + (" + bf16 autocast" if a["precision"] == "bf16" else "")
             + f"; torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
             f"Python {env.get('python', '?')}" + (" (--quick: tiny models)" if a["quick"] else ""),
             f"Peak for MFU: {_f(report['peak_tflops'])} TFLOP/s ({report['peak_source']})", "",
             "| benchmark | magnet | PyTorch | magnet / PyTorch |", "|---|---:|---:|---:|"]
    for sec in ("train-small", "train-large"):
        r = secs.get(sec)
        if r is None:
            continue
        name = r.get("arch", {}).get("label", sec)
        if "skipped" in r or ("magnet" not in r and "torch" not in r):
            why = r.get("skipped") or f"exit {r.get('returncode')}"
            lines.append(f"| train, {name} | not run: {why} | | |")
            continue
        m, t = r.get("magnet", {}), r.get("torch", {})
        st = r["batch_stats"][0]
        what = (f"{name}, {r['params'] / 1e6:.1f}M params, batch {r['batch']} x {r['seq']} + "
                f"{2 * r['batch']} SSCL ({st['tokens']} tokens/step)")
        if len(r.get("attempts", [])) > 1:
            what += " [after out of memory at batch " + ", ".join(
                str(x["batch"]) for x in r["attempts"][:-1]) + "]"
        lines.append(f"| train tokens/s: {what} | {_err(m) or _f(m.get('tokens_per_s'))}"
                     f"{_short(m)} | {_err(t) or _f(t.get('tokens_per_s'))}{_short(t)} | "
                     f"{_f(r.get('ratio'), '{:.2f}')} |")
        lines.append(f"| train step s (median of {len(m.get('times_s', []))} / "
                     f"{len(t.get('times_s', []))}) | {_f(m.get('step_s_median'), '{:.4f}')} | "
                     f"{_f(t.get('step_s_median'), '{:.4f}')} | |")
        lines.append(f"| MFU, 6x convention | {_pct(m.get('mfu'))} | {_pct(t.get('mfu'))} | |")
        lines.append(f"| executed-FLOP utilisation (frozen base, 4x) | "
                     f"{_pct(m.get('executed_utilisation'))} | "
                     f"{_pct(t.get('executed_utilisation'))} | |")
        lines.append(f"| device memory used at peak, MiB (NVML; + over the engine's start) | "
                     f"{_mem(m)} | {_mem(t)} | |")
        if "check" in m or "check" in t:
            lines.append("| check step (dropout off): mntp / sscl / msg; LoRA grad norm | "
                         + _check(m) + " | " + _check(t) + " | |")
        lc = r.get("logits_check")
        if lc:
            lines.append(f"| logits vs PyTorch fp32: max abs diff (rel), argmax agree | "
                         f"{lc['max_abs_diff']:.3g} ({lc['rel_to_max_logit']:.2g}), "
                         f"{100 * lc['argmax_agree']:.0f}% | | |")
    dec = secs.get("decode")
    if dec is not None and ("skipped" in dec or ("magnet" not in dec and "torch" not in dec)):
        why = dec.get("skipped") or f"exit {dec.get('returncode')}"
        lines.append(f"| decode | not run: {why} | | |")
    elif dec is not None:
        m, t = dec.get("magnet", {}), dec.get("torch", {})
        for B in DECODE_BATCHES:
            mb, tb = m.get(str(B), {}), t.get(str(B), {})
            agree = mb.get("greedy_prefix_agree_row0")
            extra = ("" if agree is None
                     else f" (greedy prefix agree {agree}/{dec.get('new_tokens')})")
            lines.append(f"| decode tokens/s, batch {B}, {dec.get('prompt_tokens')}-token prompt, "
                         f"{dec.get('new_tokens')} new{extra} | "
                         f"{_err(m) or _f(mb.get('tokens_per_s'))} | "
                         f"{_err(t) or _f(tb.get('tokens_per_s'))} | "
                         f"{_f(dec.get(f'ratio_{B}'), '{:.2f}')} |")
    lines += ["", "Issue 8 performance criteria:"]
    crit = report["criteria"]
    for k, v in crit.items():
        lines.append(f"- {k}: {'NOT MEASURED' if v is None else 'PASS' if v else 'FAIL'}")
    met = sum(1 for v in crit.values() if v)
    lines.append(f"criteria: {met} of {len(crit)} met")
    if report["failures"]:
        lines += ["", "Did not complete:"] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines)


def _err(e: dict[str, Any]) -> str:
    return f"error: {e['error'][:80]}" if "error" in e else ""


def _short(e: dict[str, Any]) -> str:
    if e.get("partial"):
        return " (killed: partial)"
    return " (fewer steps than --min-steps)" if e.get("short") else ""


def _mem(e: dict[str, Any]) -> str:
    peak, base = e.get("device_memory_peak_mib"), e.get("device_memory_base_mib")
    if peak is None:
        return "n/a"
    return f"{peak:.0f}" + (f" (+{peak - base:.0f})" if base is not None else "")


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"


def _check(e: dict[str, Any]) -> str:
    c = e.get("check")
    if not c:
        return "n/a"
    return " / ".join(f"{x:.4f}" for x in c["losses"]) + f"; {c['grad_norm']:.5g}"


def main() -> None:
    """Parent: run the sections and report; child (``--section``): run one section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="magnet's device: cuda, cuda:N or cpu")
    ap.add_argument("--torch-device", default=None, help="PyTorch's device (default: --device)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                    help="bf16 (default on a GPU: magnet bf16, PyTorch bf16 autocast) or fp32")
    ap.add_argument("--quick", action="store_true", help="tiny models and few tokens (dry run)")
    ap.add_argument("--out", default=None, help="write the full results here (JSON)")
    ap.add_argument("--budget-s", type=float,
                    default=float(os.environ.get("MAGNET_BENCH_BUDGET_S", 240)),
                    help="wall-clock budget of the whole run (env MAGNET_BENCH_BUDGET_S)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--seq", type=int, default=None, help="training sequence length (512)")
    ap.add_argument("--batch-small", type=int, default=32)
    ap.add_argument("--batch-large", type=int, default=16)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=10, help="timed steps at most (budget)")
    ap.add_argument("--min-steps", type=int, default=5, help="timed steps at least")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--n-batches", type=int, default=3, help="distinct batches, cycled")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode length (128)")
    ap.add_argument("--repeats", type=int, default=3, help="timed decode calls")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.torch_device = args.torch_device or args.device
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.seq is None:
        args.seq = 32 if args.quick else 512
    if args.new_tokens is None:
        args.new_tokens = 8 if args.quick else 128
    if args.quick:
        args.batch_small, args.batch_large = min(args.batch_small, 2), min(args.batch_large, 2)
    if args.section:
        sec = Section(args)
        if args.deadline is None:
            args.deadline = time.time() + args.budget_s
        (train_section if args.section.startswith("train") else decode_section)(sec)
        return
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    results = run_sections(args)
    report = summarize(args, results)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(render(report))
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
