"""Inference throughput on SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32 by both).

magnet vs transformers (same weights, same thread count, same process, median of repeats):
  - decode tokens/s, greedy, batch 1 and 8 (a fixed prompt; EOS ignored so every row runs the
    full length; time of the whole generate call, prefill included, over the new tokens);
  - sentence embeddings/s: all-CONTEXT (bidirectional) pass, instruction + text + EOS,
    last-token pooling, same batches (sorted by length, right-padded).
and, when ``llama_cpp`` (llama-cpp-python) imports, llama.cpp's batch-1 decode on the same GGUF.

Run (OpenBLAS tuning variables unset for both engines):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/inference.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import magnet  # noqa: E402
from magnet.embedding import DEFAULT_INSTRUCTION  # noqa: E402
from magnet.generation import Sampling, generate_ids  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
SENTENCES = [
    "The cat sat on the mat and watched the birds outside.",
    "Quantum computers use qubits that can hold superpositions of states.",
    "She walked to the market to buy fresh bread and vegetables.",
    "The stock market fell sharply after the announcement.",
    "A gentle breeze moved through the tall grass of the meadow.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "He forgot his umbrella and got soaked on the way home.",
    "The committee will review the proposal next Tuesday morning.",
]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown CPU"


def median_times(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of each engine's call, the repeats interleaved (ours, theirs, theirs,
    ours, ...: each goes first in turn) after a warm-up of each, so that load changes on a
    shared machine reach both sides."""
    ours()
    theirs()
    times: tuple[list[float], list[float]] = ([], [])
    pairs = [(ours, times[0]), (theirs, times[1])]
    for r in range(repeats):
        for fn, out in pairs if r % 2 == 0 else pairs[::-1]:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: the tests' cache)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--texts", type=int, default=64, help="sentences to embed")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    from tests.conftest import find_smollm2_gguf

    path = Path(args.gguf) if args.gguf else find_smollm2_gguf()
    if path is None or not path.is_file():
        sys.exit("SmolLM2 GGUF not found")
    import torch
    import transformers

    threads = magnet.get_num_threads()
    torch.set_num_threads(threads)
    m = magnet.Model.from_pretrained(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32,
        attn_implementation="eager")
    ref.eval()
    tok = m.tokenizer
    rows: list[tuple[str, float, float, str]] = []

    # ---- decode
    prompt = tok.encode(PROMPT)
    n = args.new_tokens
    for B in (1, 8):
        prompts = [prompt] * B
        ids = torch.tensor(prompts)

        def hf(ids=ids):
            with torch.no_grad():
                ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=0)

        ours, theirs = median_times(
            lambda p=prompts: generate_ids(m, p, n, Sampling(), eos_id=-1), hf, args.repeats)
        rows.append((f"decode tok/s, batch {B} ({len(prompt)}-token prompt, {n} new)",
                     B * n / ours, B * n / theirs, "transformers generate"))
        if B == 1:
            ours_ids = generate_ids(m, [prompt], n, Sampling(), eos_id=-1)[0]
            with torch.no_grad():
                hf_ids = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, pad_token_id=0)
            agree = sum(a == b for a, b in zip(ours_ids, hf_ids[0, len(prompt):].tolist(),
                                               strict=False))
            print(f"greedy tokens agreeing with transformers (batch 1): {agree}/{n}")

    # ---- sentence embeddings (last-token pooling, bidirectional)
    texts = [SENTENCES[i % len(SENTENCES)] + f" ({i})" for i in range(args.texts)]
    head = ([tok.bos_id] if tok.bos_id is not None else []) + \
        tok.encode(DEFAULT_INSTRUCTION, add_bos=False)
    seqs = [head + tok.encode(t, add_bos=False) + [tok.eos_id] for t in texts]
    order = np.argsort([len(s) for s in seqs], kind="stable")

    def torch_embed() -> np.ndarray:
        out = np.empty((len(seqs), m.config.hidden_size), np.float32)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            T = max(len(seqs[j]) for j in idx)
            ids = np.zeros((len(idx), T), np.int64)
            valid = np.zeros((len(idx), T), bool)
            for r, j in enumerate(idx):
                ids[r, :len(seqs[j])] = seqs[j]
                valid[r, :len(seqs[j])] = True
            # bidirectional within each text, padding invisible (padding queries see themselves)
            mask = valid[:, None, :] | np.eye(T, dtype=bool)[None]
            add = torch.as_tensor(np.where(mask, 0.0, torch.finfo(torch.float32).min)
                                  .astype(np.float32)[:, None])
            with torch.no_grad():
                h = ref.model(input_ids=torch.as_tensor(ids), attention_mask=add).last_hidden_state
            last = torch.as_tensor(valid.sum(1) - 1)
            out[idx] = h[torch.arange(len(idx)), last].numpy()
        return out

    ours, theirs = median_times(lambda: m.embed(texts, batch_size=args.batch_size), torch_embed,
                                args.repeats)
    diff = np.abs(m.embed(texts, batch_size=args.batch_size) - torch_embed()).max()
    print(f"sentence embeddings, max |magnet - PyTorch| = {diff:.2e}")
    rows.append((f"sentence embeddings/s ({len(texts)} texts, batch {args.batch_size}, last)",
                 len(texts) / ours, len(texts) / theirs, "PyTorch, same pooling"))

    # ---- llama.cpp (optional)
    llama_note = ""
    try:
        import llama_cpp
    except ImportError:
        llama_note = "llama-cpp-python is not installed: no llama.cpp row"
    else:
        # the prefill's threads too (n_threads_batch defaults to every CPU), and a context that
        # holds the prompt and every new token
        llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads,
                              verbose=False, n_ctx=len(prompt) + n + 16)

        def lc():
            llm.reset()
            toks = llm.tokenize(PROMPT.encode(), add_bos=True)
            count = 0
            for _ in llm.generate(toks, top_k=1, temp=0.0):
                count += 1
                if count >= n:
                    break

        ours, theirs = median_times(
            lambda: generate_ids(m, [prompt], n, Sampling(), eos_id=-1), lc, args.repeats)
        rows.append(("decode tok/s, batch 1 (Q4_1 in llama.cpp, f32 in magnet)", n / ours,
                     n / theirs, "llama.cpp"))

    print(f"\nMachine: {cpu_name()}, {threads} threads; model {path.name} "
          f"({m.num_parameters:,} parameters, float32 in magnet and PyTorch)\n")
    print("| benchmark | magnet | other | magnet / other | other engine |")
    print("|---|---:|---:|---:|---|")
    for name, a, b, other in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {other} |")
    if llama_note:
        print(f"\n{llama_note}")


if __name__ == "__main__":
    main()
