"""The CPU attention op alone (forward and backward), on SmolLM2-135M's head layout.

Run with::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/attention.py [BUILD ...]

Each BUILD is a checkout whose ``magnet/_C*.so`` has been built (for example with
``MAGNET_CUDA=0 python setup.py build_ext --inplace``); without one, the ``magnet._C`` that
Python imports is timed. Several builds are loaded side by side into one process and timed in
turn, repeat after repeat, so that a change can be measured as a ratio on a shared machine; the
first build is the baseline of the ratio column. ``_C.op_attention`` runs the forward and the
backward of one layer's attention (9 query heads, 3 key/value heads, head size 64) on:

- ``causal 8x256``: the forward benchmark's batch (all SPAN);
- ``causal 4x128``: the training benchmark's batch;
- ``bidirectional 16x25``: a batch of short sentences as ``embed`` sees them (all CONTEXT).

Medians over the repeats; ``max diff`` is the largest difference of any output from the
baseline's.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

SHAPES = [  # name, batch, tokens, role (0 = CONTEXT, 1 = SPAN)
    ("causal 8x256", 8, 256, 1),
    ("causal 4x128", 4, 128, 1),
    ("bidirectional 16x25", 16, 25, 0),
]
HQ, HKV, HD = 9, 3, 64


def load_build(root: Path):
    """magnet._C from the checkout at root, as a module of its own."""
    found = glob.glob(str(root / "magnet" / "_C*.so"))
    if not found:
        raise FileNotFoundError(f"no magnet/_C*.so under {root}: build it first")
    spec = importlib.util.spec_from_file_location("magnet._C", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="*", type=Path, help="checkouts with a built magnet/_C")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.builds:
        builds = {str(b): load_build(b) for b in args.builds}
    else:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's magnet
        from magnet import _C

        builds = {"magnet._C": _C}
    for module in builds.values():
        module.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    names = list(builds)
    print(f"threads {args.threads}, {args.repeats} repeats, medians (ms); baseline {names[0]}")
    for label, batch, tokens, role in SHAPES:
        q = rng.standard_normal((batch, tokens, HQ, HD), dtype=np.float32)
        k = rng.standard_normal((batch, tokens, HKV, HD), dtype=np.float32)
        v = rng.standard_normal((batch, tokens, HKV, HD), dtype=np.float32)
        dout = rng.standard_normal((batch, tokens, HQ, HD), dtype=np.float32)
        roles = np.full((batch, tokens), role, np.uint8)
        segments = np.zeros((batch, tokens), np.int32)
        times = {n: [] for n in names}
        outputs = {}
        for _ in range(args.repeats):
            for n in names:
                start = time.perf_counter()
                outputs[n] = builds[n].op_attention(q, k, v, roles, segments, dout)
                times[n].append(time.perf_counter() - start)
        base = float(np.median(times[names[0]]))
        for n in names:
            med = float(np.median(times[n]))
            pairs = zip(outputs[n], outputs[names[0]], strict=True)
            diff = max(float(np.abs(a - b).max()) for a, b in pairs)
            print(f"{label:22s} {n:30s} {med * 1e3:9.2f} ms  {base / med:5.2f}x  "
                  f"max diff {diff:.1e}")


if __name__ == "__main__":
    main()
