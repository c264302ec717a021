"""The first-run demo: MAGNET adaptation of a small model, then embed, infill and generate.

It needs no download: the training text is sampled from the model itself (for the embedded
stories260K, short children's stories), so the demo runs offline on a fresh machine.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import numpy as np

import magnet

SENTENCES = [
    "The little dog ran to the park to play with a ball.",
    "A small puppy played with a ball in the park.",
    "Lily baked a cake with her mom in the kitchen.",
    "Mom and Lily made a yummy cake together.",
    "The big ship sailed across the blue sea.",
]
INFILL_TEXTS = [
    "Once upon a time, there was a little [BLANK]. She loved to play outside in the sun.",
    "Tom went to the [BLANK] to buy some milk. Then he [BLANK] home and drank it.",
]
PROMPT = "Once upon a time, there was a little girl named Lily. She"


def _similarity_table(model: magnet.Model, out: TextIO) -> None:
    vecs = model.embed(SENTENCES, normalize=True)
    sims = vecs @ vecs.T
    out.write("    " + " ".join(f"{j:>5}" for j in range(len(SENTENCES))) + "\n")
    for i, row in enumerate(sims):
        out.write(f"{i:>3} " + " ".join(f"{x:5.2f}" for x in row) + f"  {SENTENCES[i]}\n")


def run_demo(model_path: str = "stories260K", steps: int = 60, batch_size: int = 8,
             seq_len: int = 64, seed: int = 0, out: TextIO = sys.stdout,
             progress: bool = True) -> dict[str, object]:
    """Adapt ``model_path`` briefly with the ``magnet`` preset and show what it can do.

    ``steps`` >= 1 (the loss table compares the first and last steps), ``0 <= seed < 2**64``;
    both are checked before any work. Returns the adaptation history and the outputs shown,
    for tests and notebooks.
    """
    for name, value in (("steps", steps), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    t0 = time.perf_counter()
    model = magnet.Model.from_pretrained(model_path)
    out.write(f"Loaded {model!r}\n\n")

    before = model.generate(PROMPT, max_new_tokens=40)
    out.write(f"Generation before adaptation:\n  {PROMPT}{before}\n\n")

    out.write("Sampling training text from the model itself (no download needed)...\n")
    prompts = ["Once upon a time", "One day", "There was a", "Lily and Ben", "The sun was"]
    stories = []
    for k in range(4):
        batch = model.generate([p for p in prompts for _ in range(4)], max_new_tokens=seq_len,
                               do_sample=True, temperature=1.0, top_p=0.95, seed=seed + k)
        stories += [p + s for p, s in zip([p for p in prompts for _ in range(4)], batch,
                                          strict=True)]
    out.write(f"  {len(stories)} stories, e.g. {stories[0][:80]!r}...\n\n")

    result = model.adapt(stories, preset="magnet", steps=steps, batch_size=batch_size,
                         seq_len=seq_len, lr=3e-3, seed=seed, progress=progress)
    h = result.history
    first, last = h[: max(1, len(h) // 10)], h[-max(1, len(h) // 10):]
    out.write("Adaptation (magnet preset): loss  first -> last\n")
    for key in ("mntp", "sscl", "msg"):
        a = float(np.mean([r[key] for r in first]))
        b = float(np.mean([r[key] for r in last]))
        out.write(f"  {key:5} {a:6.3f} -> {b:6.3f}\n")
    out.write("\nSentence similarity (cosine of sentence embeddings):\n")
    _similarity_table(model, out)

    out.write("\nInfilling (both sides of each blank are used):\n")
    fills = []
    for text in INFILL_TEXTS:
        r = model.infill(text)
        fills.append(r)
        out.write(f"  {text}\n  -> {r.text}   (span tokens: {r.span_tokens})\n")

    after = model.generate(PROMPT, max_new_tokens=40)
    out.write(f"\nGeneration after adaptation:\n  {PROMPT}{after}\n")
    out.write(f"\nDone in {time.perf_counter() - t0:.1f} s.\n")
    return {"history": h, "before": before, "after": after, "infill": fills}
