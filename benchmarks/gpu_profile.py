"""Where the GPU time of a training step goes: the CUDA kernels of magnet's ``magnet`` step (and
optionally PyTorch's), captured with torch.profiler (CUPTI sees every kernel of the process,
magnet's included), summed by kernel name.

    python3 benchmarks/gpu_profile.py --sections train-large --steps 3 --out prof.md

Uses the models, batches and step of ``benchmarks/gpu_bench.py`` (same shapes and settings).
Needs a GPU; prints a table per engine: kernel, calls, total ms per step, share of the step.

``--compare NAME`` (repeatable) profiles magnet's step again under a kernel switch that is off by
default, for the measurement that decides its default: ``lora-tc`` (LoRA's dropped products on
the tensor cores, ``MAGNET_CUDA_LORA_TC=1``), ``attention-packed`` (attention from packed
bfloat16 operands, ``MAGNET_CUDA_ATTENTION_PACKED=1``) or ``both``. The switches are read at
each call, so one process profiles every variant on the same model and batches.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench as gb  # noqa: E402


def kernel_table(step: Callable[[int], Any], n_batches: int, steps: int, top: int) -> str:
    """Profile ``steps`` calls of ``step`` (after the caller's warm-up); one markdown table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(i % n_batches)
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / steps
    totals: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = ev.name if len(ev.name) <= 90 else ev.name[:87] + "..."
        cur = totals.setdefault(name, [0, 0.0])
        cur[0] += 1
        cur[1] += ev.time_range.elapsed_us()
    busy = sum(v[1] for v in totals.values()) / steps / 1e3
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
    out = [f"wall per step {wall * 1e3:.1f} ms, GPU busy {busy:.1f} ms "
           f"({len(totals)} kernel names)", "",
           "| kernel | calls/step | ms/step | share of busy |", "|---|---:|---:|---:|"]
    for name, (calls, us) in rows[:top]:
        ms = us / steps / 1e3
        out.append(f"| `{name}` | {calls / steps:.0f} | {ms:.2f} | {100 * ms / busy:.1f}% |")
    return "\n".join(out)


# The kernel switches that --compare can turn on (environment variables read at each call).
VARIANTS: dict[str, dict[str, str]] = {
    "lora-tc": {"MAGNET_CUDA_LORA_TC": "1"},
    "attention-packed": {"MAGNET_CUDA_ATTENTION_PACKED": "1"},
    "both": {"MAGNET_CUDA_LORA_TC": "1", "MAGNET_CUDA_ATTENTION_PACKED": "1"},
}


def profile_section(section: str, steps: int, top: int, with_torch: bool,
                    compare: list[str] | tuple[str, ...] = (),
                    publish: Callable[[list[str]], None] = lambda lines: None) -> list[str]:
    """The kernel tables of one gpu_bench section (``train-small`` or ``train-large``); then,
    for each name in ``compare`` (keys of ``VARIANTS``), magnet's step again with that variant's
    switches set. ``publish`` gets the report so far after each table, so that a run stopped by
    its time limit keeps what it measured."""
    import torch
    from torch_magnet_step import TorchMagnetStep, attach_lora

    from magnet import _C

    size = section.split("-")[1]
    arch = gb.ARCHS[size]
    batch = 32 if size == "small" else 16
    hf, model = gb.build_models(arch, "cuda")
    batches, _ = gb.make_batches(arch, batch, 512, 2)
    model._c.attach_lora(gb.LORA_RANK, gb.LORA_ALPHA, gb.LORA_TARGETS, gb.LORA_SEED)
    init = model._c.lora_state_dict()
    report: list[str] = []
    if with_torch:
        params = attach_lora(hf, gb.LORA_RANK, gb.LORA_ALPHA, gb.LORA_DROPOUT, gb.RESID_DROPOUT,
                             init)
        runner = TorchMagnetStep(hf, params, autocast_dtype=torch.bfloat16)
        tb = [gb.packed_torch_batch(b) for b in batches]
        for k in range(2):
            runner.step(tb[k % 2])
        report += [f"## {section}: PyTorch", "",
                   kernel_table(lambda k: runner.step(tb[k]), 2, steps, top), ""]
        publish(report)
        runner = params = None
    hf = None
    gc.collect()
    torch.cuda.empty_cache()
    model.to("cuda", precision="bf16")
    base = dict(mask_token_id=gb.MASK_ID, use_spans=1, all_span_frac=0.25, temperature=0.05,
                full_finetune=0, lr=2e-4, weight_decay=0.0, clip_norm=1.0,
                total_steps=1_000_000, warmup_steps=0, lora_dropout=gb.LORA_DROPOUT,
                resid_dropout=gb.RESID_DROPOUT)
    trainer = _C.Trainer(model._c, base)

    def step(k: int) -> None:
        b = batches[k]
        trainer.micro_step(b["masked"], b["mlen"], b["a"], b["alen"], b["apool"], None, None,
                           None, 1.0, 1.0, 1.0, 0, 1.0, int(b["seed"][0]), True)
        trainer.apply()

    for k in range(2):
        step(k)
    report += [f"## {section}: magnet", "", kernel_table(step, 2, steps, top), ""]
    publish(report)
    for name in compare:
        switches = VARIANTS[name]
        os.environ.update(switches)
        try:
            for k in range(2):
                step(k)
            label = ", ".join(f"{key}={value}" for key, value in switches.items())
            report += [f"## {section}: magnet, {label}", "", kernel_table(step, 2, steps, top), ""]
            publish(report)
        finally:
            for key in switches:
                os.environ.pop(key, None)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="train-small,train-large")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--torch", action="store_true", help="profile PyTorch's step as well")
    ap.add_argument("--compare", action="append", default=[], choices=sorted(VARIANTS),
                    help="profile magnet's step again with this kernel switch on (repeatable)")
    ap.add_argument("--compare-lora-tc", action="store_true",
                    help="the same as --compare lora-tc")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    compare = list(dict.fromkeys(args.compare + (["lora-tc"] if args.compare_lora_tc else [])))
    report = [f"# GPU kernel profile ({torch.cuda.get_device_name()})", ""]

    def publish(lines: list[str]) -> None:
        if args.out:
            args.out.write_text("\n".join(report + lines) + "\n")

    for section in args.sections.split(","):
        report += profile_section(section, args.steps, args.top, args.torch, compare, publish)
        gc.collect()
        publish([])
        print("\n".join(report), flush=True)


if __name__ == "__main__":
    main()
