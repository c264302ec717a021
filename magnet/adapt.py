"""Model.adapt(): MAGNET adaptation (and the llm2vec / mntp baselines) driven from Python.

Python reads and tokenizes the data, builds padded id arrays, keeps the history, writes
checkpoints and shows progress. Masking, span sampling, the losses, backward and AdamW run in
the C core (``magnet._C.Trainer``).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from magnet import _C
from magnet.data import ChunkStream, TextSource, pad_rows, read_texts

# At run time, not for type checkers only, so that typing.get_type_hints resolves `Model`:
# magnet.model imports this module lazily (inside Model.adapt), so there is no cycle.
from magnet.model import Model
from magnet.results import AdaptResult, Stage
from magnet.save import check_target_dir, remove_stale_temps, write_file_atomically

DEFAULT_INSTRUCTION = "Given the sentence, find its representation: "

# Bit of each LoRA target in the C core's mask (csrc/model/lora.h), under every accepted name.
LORA_TARGETS = {
    "q": 0, "q_proj": 0, "wq": 0,
    "k": 1, "k_proj": 1, "wk": 1,
    "v": 2, "v_proj": 2, "wv": 2,
    "o": 3, "o_proj": 3, "wo": 3, "attn.c_proj": 3,
    "gate": 4, "gate_proj": 4, "w_gate": 4,
    "up": 5, "up_proj": 5, "w_up": 5, "c_fc": 5,
    "down": 6, "down_proj": 6, "w_down": 6, "mlp.c_proj": 6,
}
GPT2_GROUPS = {"c_attn": (0, 1, 2)}


# docs/method.md, Presets: the three presets, so the paper's comparison runs in one engine.
PRESETS: dict[str, dict[str, Any]] = {
    "magnet": dict(stages=[Stage(1.0, (1.0, 1.0, 1.0), "last")], use_spans=1,
                   all_span_frac=0.25),
    "llm2vec": dict(stages=[Stage(0.5, (1.0, 0.0, 0.0)), Stage(0.5, (0.0, 1.0, 0.0), "mean")],
                    use_spans=0, all_span_frac=0.0),
    "mntp": dict(stages=[Stage(1.0, (1.0, 0.0, 0.0))], use_spans=0, all_span_frac=0.0),
}


def lora_mask(targets: Iterable[str] | None) -> int:
    """The C target bit mask of LoRA target names (None: every projection)."""
    if targets is None:
        return (1 << 7) - 1
    if isinstance(targets, str):
        targets = [targets]
    mask = 0
    for t in targets:
        if t in GPT2_GROUPS:
            for b in GPT2_GROUPS[t]:
                mask |= 1 << b
        elif t in LORA_TARGETS:
            mask |= 1 << LORA_TARGETS[t]
        else:
            raise ValueError(
                f"unknown LoRA target {t!r}; use q, k, v, o, gate, up, down (or the Hugging Face "
                f"names q_proj..down_proj, GPT-2 c_attn, attn.c_proj, c_fc, mlp.c_proj)"
            )
    if mask == 0:
        raise ValueError("lora_targets is empty")
    return mask


def mask_token_id(model: Model) -> int:
    """The tokenizer's mask or unknown token, else ``_`` (LLM2Vec's choice for LLaMA)."""
    backend = model.tokenizer.backend
    for tok in ("<mask>", "[MASK]", "<unk>", "[UNK]"):
        i = backend.token_to_id(tok)
        if i is not None:
            return int(i)
    ids = model.tokenizer.encode("_", add_bos=False, add_eos=False)
    return int(ids[-1])


def _stage_at(stages: list[Stage], step: int, steps: int) -> Stage:
    edge = 0.0
    for s in stages:
        edge += s.fraction * steps
        if step < edge:
            return s
    return stages[-1]


def _fingerprint(model: Model) -> dict[str, Any]:
    c = model.config
    return {"arch": c.arch, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_layers": c.num_layers, "num_heads": c.num_heads,
            "num_kv_heads": c.num_kv_heads, "intermediate_size": c.intermediate_size,
            "num_parameters": model.num_parameters}


# Elements hashed per tensor: enough that a merged adapter (dense B A) or other weights show,
# few enough that a large model costs no more than reading its weights once.
_DIGEST_SAMPLE = 4096


def _base_weights_digest(model: Model) -> dict[str, str]:
    """A short hash per base weight tensor (its size and a fixed, evenly spaced sample of its
    values), the adapters excluded: what a LoRA checkpoint was trained on. The C core reads one
    tensor at a time, so this never holds a second copy of the model."""
    out = {}
    for name, (numel, sample) in sorted(model._c.weight_samples(_DIGEST_SAMPLE).items()):
        h = hashlib.blake2b(digest_size=8)
        h.update(repr(numel).encode())
        h.update(np.ascontiguousarray(sample, dtype="<f4").tobytes())
        out[name] = h.hexdigest()
    return out


def _check_base_weights(saved: dict[str, str], now: dict[str, str], where: Path) -> None:
    """Refuse to resume LoRA adapters on base weights other than those they were trained on."""
    differ = sorted(n for n in saved.keys() | now.keys() if saved.get(n) != now.get(n))
    if differ:
        shown = ", ".join(differ[:4]) + (", ..." if len(differ) > 4 else "")
        raise ValueError(
            f"{where}: the checkpoint's LoRA adapters were trained on other base weights than "
            f"this model's: {len(differ)} of {len(saved)} tensors differ ({shown}). Load the "
            "model that run started from; if that run began by merging adapters attached then "
            "(a second adapt() with other LoRA settings merges them), merge the same adapters "
            "(model.merge_lora()) before resuming"
        )


def _f32(name: str, value: Any, low: float = 0.0, strict: bool = False,
         below: float | None = None) -> float:
    """``value`` as the C core holds it (float32), checked there: finite, >= ``low`` (>
    ``low`` when ``strict``), < ``below``; a value that rounds out of range (1 - 1e-9 to 1, 1e-50
    to 0, 1e39 to inf) is refused by name, before the model changes."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    span = f"({'>' if strict else '>='} {low:g}" + (f" and < {below:g}" if below else "") + ")"
    bad = f"{name} must be a finite number {span}, got {value!r}"
    try:
        v = float(value)
    except OverflowError:  # an int past float64 (10**400)
        raise ValueError(bad) from None
    if not (math.isfinite(v) and (v > low if strict else v >= low)
            and (below is None or v < below)):
        raise ValueError(bad)
    with np.errstate(over="ignore"):
        f = float(np.float32(v))
    if not (math.isfinite(f) and (below is None or f < below)):
        raise ValueError(f"{bad} (it is {f!r} in float32, the C core's precision)")
    if f == 0.0 and v != 0.0:
        raise ValueError(f"{name}={value!r} is 0 in float32, the C core's precision: pass 0 "
                         "to turn it off, or a value of at least 1e-38")
    return f


def _diverged(step: int, start: int, checkpoint: Path | None, ours: bool) -> str:
    """The end of the message of a run that diverged at ``step``: where to go on from.
    ``checkpoint``: a directory holding a checkpoint, ``ours`` when this run wrote it or
    resumed from it (else an earlier run left it, unchanged)."""
    where = ""
    if checkpoint is not None:
        where = (f"; the last good checkpoint is in {checkpoint}" if ours else
                 f"; the checkpoint in {checkpoint} (an earlier run's) is unchanged")
    if step == start == 0:
        return (f"{where}; no update had been made: the settings or the data give a non-finite "
                "loss (temperature, loss weights)")
    return (f"{where}; the model in memory holds the diverged weights: load it again before "
            "using it (a lower lr usually helps)")


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit ints that sends neighbours far apart."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


# the micro-batch seed scheme a checkpoint's run used (absent: the first, before _mix64), so
# that resuming a checkpoint of an older magnet still continues its run exactly
SEED_SCHEME = 2


def _seed_of(seed: int, step: int, micro: int, grad_accum: int = 1, scheme: int = SEED_SCHEME
             ) -> int:
    """Each (seed, step, micro-batch) its own 64-bit seed: the run's seed scrambled, plus the
    micro-batch's index (steps max(64, grad_accum) apart). Scheme 1, a plain seed * k + index
    reduced mod 2**63, gave seeds s and s + 2**63 the same draws, and seed 1's first
    micro-batch those of seed 0 at step 15625."""
    index = step * max(64, grad_accum) + micro
    if scheme == 1:
        return (seed * 1_000_003 + index) % (1 << 63)
    return (_mix64(seed & _MASK64) + index) & _MASK64


def _save_checkpoint(directory: Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a trainer state (``trainer.state()``) and metadata to ``directory/checkpoint.npz``
    atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(directory, ".checkpoint-", ".npz")  # the temporaries of older magnets
    target = directory / "checkpoint.npz"
    arrays = {"params": state["params"], "m": state["m"], "v": state["v"],
              "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    write_file_atomically(target, lambda f: np.savez(f, **arrays))
    return target


def _load_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = directory / "checkpoint.npz"
    if not path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}")
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            state = {"params": z["params"], "m": z["m"], "v": z["v"], "step": meta["step"]}
        for key in ("step", "position"):
            if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 0:
                raise ValueError(f"meta {key} is {meta[key]!r}")
        sizes = {state[k].size for k in ("params", "m", "v")}
        if len(sizes) != 1 or any(state[k].dtype != np.float32 for k in ("params", "m", "v")):
            raise ValueError("params, m and v are not float32 arrays of one size")
    # a truncated or damaged zip: BadZipFile (also a CRC error), EOFError (zero bytes)
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable magnet checkpoint ({e})") from None
    return state, meta


def _int_option(name: str, value: Any) -> int:
    """``value`` as a Python int: an int or a NumPy integer; a bool (True would count as 1), a
    timedelta64 (a NumPy integer subtype) or anything else is a TypeError naming ``name``."""
    if isinstance(value, (bool, np.bool_, np.timedelta64)) or not isinstance(
            value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def adapt(model: Model, data: TextSource, preset: str = "magnet", steps: int = 1000,
          batch_size: int = 8, seq_len: int = 256, lr: float = 2e-4, lora_rank: int = 16,
          lora_alpha: float = 32.0, full_finetune: bool = False,
          weights: dict[str, float] | None = None, seed: int = 0,
          pairs: list[tuple[str, str]] | None = None, eval_data: TextSource | None = None,
          checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 200,
          resume: bool = False, progress: bool = True,
          callback: Callable[[dict[str, float]], Any] | None = None, *,
          lora_targets: Iterable[str] | None = None, lora_dropout: float = 0.05,
          resid_dropout: float = 0.1, warmup_steps: int | None = None,
          weight_decay: float = 0.0, clip_norm: float = 1.0, grad_accum: int = 1,
          sscl_max_tokens: int = 64, instruction: str = DEFAULT_INSTRUCTION,
          temperature: float = 0.05, stages: list[Stage] | None = None,
          eval_batches: int = 4) -> AdaptResult:
    """See :meth:`magnet.Model.adapt`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    # every setting is checked, and all that can fail is built (data, eval stream, trainer
    # settings, the checkpoint to resume), before the model's adapters are touched: a call that
    # fails leaves the model as it was.
    # NumPy integers are taken as generate() and embed() take them, and made Python ints here:
    # what follows (the C trainer's config, the checkpoint's JSON) needs real ints
    steps = _int_option("steps", steps)
    batch_size = _int_option("batch_size", batch_size)
    seq_len = _int_option("seq_len", seq_len)
    checkpoint_every = _int_option("checkpoint_every", checkpoint_every)
    grad_accum = _int_option("grad_accum", grad_accum)
    sscl_max_tokens = _int_option("sscl_max_tokens", sscl_max_tokens)
    eval_batches = _int_option("eval_batches", eval_batches)
    seed = _int_option("seed", seed)
    if not 0 <= steps <= 2**30:  # the C core takes steps as an int of at most 2**30
        raise ValueError(f"steps must be in 0..{2**30}, got {steps}")
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum),
                        ("checkpoint_every", checkpoint_every),
                        ("sscl_max_tokens", sscl_max_tokens), ("eval_batches", eval_batches)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= seed < 2**64:  # the adapters' initialisation takes it as an unsigned 64-bit int
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    if seq_len < 4:
        raise ValueError(f"seq_len must be at least 4, got {seq_len}")
    limit = model.config.max_positions
    if model.config.sliding_window:
        limit = min(limit, model.config.sliding_window)
    if seq_len > limit:
        raise ValueError(f"seq_len={seq_len} exceeds the model's context of {limit} tokens")
    for name, value in (("full_finetune", full_finetune), ("resume", resume)):
        if not isinstance(value, (bool, np.bool_)):  # "no" would count as True
            raise TypeError(f"{name} must be True or False, got {value!r}")
    full_finetune, resume = bool(full_finetune), bool(resume)
    _f32("lr", lr)
    _f32("clip_norm", clip_norm)  # 0 turns clipping off
    if not full_finetune:  # lora_rank is unused (and unchecked) for a full fine-tune
        lora_rank = _int_option("lora_rank", lora_rank)
        if not 1 <= lora_rank <= 4096:
            raise ValueError(f"lora_rank must be an int in 1..4096, got {lora_rank!r}")
        _f32("lora_alpha", lora_alpha, strict=True)
    for name, value in (("lora_dropout", lora_dropout), ("resid_dropout", resid_dropout)):
        _f32(name, value, below=1.0)
    _f32("temperature", temperature, strict=True)
    _f32("weight_decay", weight_decay)
    if warmup_steps is not None:
        warmup_steps = _int_option("warmup_steps", warmup_steps)
        if not 0 <= warmup_steps <= 2**30:
            raise ValueError(f"warmup_steps must be an int in 0..{2**30}, got {warmup_steps!r}")
    if instruction is not None and not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__} "
                        f"{instruction!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if model.tokenizer is None:
        raise ValueError("adapt needs a model with a tokenizer")
    if model.tokenizer.eos_id is None:
        raise ValueError("adapt needs a tokenizer with an EOS token (SSCL appends it)")
    spec = PRESETS[preset]
    stage_list = list(stages) if stages is not None else list(spec["stages"])
    if not stage_list:
        raise ValueError("stages must hold at least one Stage")
    for i, st in enumerate(stage_list):
        if not isinstance(st, Stage):
            raise TypeError(f"stages[{i}] is {type(st).__name__}, not magnet.adapt.Stage")
        if not (isinstance(st.fraction, (int, float)) and st.fraction > 0
                and math.isfinite(st.fraction)):
            raise ValueError(f"stages[{i}].fraction must be a positive number, got {st.fraction}")
        if not isinstance(st.weights, (tuple, list)) or len(st.weights) != 3 or not all(
                isinstance(w, (int, float)) and w >= 0 and math.isfinite(w) for w in st.weights):
            raise ValueError(f"stages[{i}].weights must be three non-negative numbers "
                             f"(mntp, sscl, msg), got {st.weights}")
        if st.pooling not in ("last", "mean"):
            raise ValueError(f"stages[{i}].pooling must be 'last' or 'mean', got {st.pooling!r}")
    if weights is not None:
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights must be a dict such as {{'sscl': 0.5}}, got "
                            f"{type(weights).__name__} {weights!r}")
        unknown = set(weights) - {"mntp", "sscl", "msg"}
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; use mntp, sscl, msg")
        for key, w in weights.items():
            _f32(f"weights[{key!r}]", w)
    # MSG trains on spans: a preset that makes none (no spans, no all-SPAN rows) gives an MSG
    # weight nothing to train, and the history would show msg=0.0 as if it were perfect
    makes_spans = bool(spec["use_spans"]) or spec["all_span_frac"] > 0
    if not makes_spans:
        for i, st in enumerate(stage_list):
            if st.weights[2] > 0:
                raise ValueError(f"stages[{i}] weights msg {st.weights[2]} but preset {preset!r} "
                                 "makes no spans to generate; use preset='magnet'")
    if weights is not None:
        # an override reweights an objective in the stages that train it (weight > 0 there);
        # a stage that leaves it out keeps 0 (llm2vec's MNTP half stays without SSCL), so a
        # positive weight for an objective no stage trains would be ignored: refuse it
        names = ("mntp", "sscl", "msg")
        for j, key in enumerate(names):
            if not weights.get(key, 0) > 0:
                continue
            if key == "msg" and not makes_spans:
                raise ValueError(f"weights['msg'] > 0 but preset {preset!r} makes no spans to "
                                 "generate; use preset='magnet'")
            if not any(st.weights[j] > 0 for st in stage_list):
                owner = "no stage of stages=" if stages is not None else (
                    f"preset {preset!r} never")
                raise ValueError(
                    f"weights[{key!r}] > 0 but {owner} trains {key} (its weight is 0 in every "
                    "stage), and weights= only reweights an objective in the stages that train "
                    f"it; use another preset, or stages= to add {key}")
        stage_list = [Stage(s.fraction,
                            tuple(float(weights.get(key, w)) if w > 0 else w
                                  for key, w in zip(names, s.weights, strict=True)),
                            s.pooling)
                      for s in stage_list]
    # after the overrides (each checked above as weights[...]): the weights that will train
    for i, st in enumerate(stage_list):
        where = f"stages[{i}]" if stages is not None else f"stage {i} of preset {preset!r}"
        if not any(w > 0 for w in st.weights):
            raise ValueError(f"{where} trains nothing: its loss weights (mntp, sscl, msg) are "
                             f"{tuple(st.weights)}" + (f" with weights={weights}" if weights
                                                       else ""))
        if st.weights[1] > 0 and batch_size < 2:
            # SSCL contrasts each row with the other rows of its micro-batch, which holds
            # batch_size rows (pairs too: one pair per row); one row has nothing to contrast
            raise ValueError(f"batch_size={batch_size} is too small for SSCL ({where} weights it "
                             f"{st.weights[1]}): it needs at least 2 rows per micro-batch; use "
                             "batch_size >= 2 or weights={'sscl': 0}")
    targets = lora_mask(lora_targets)
    checkpoint_path = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if checkpoint_path is not None:
        # a file there, or no way to make it, would otherwise show at the first checkpoint
        check_target_dir(checkpoint_path, "checkpoint_dir", replaced=False)
    texts = read_texts(data)
    if isinstance(texts, (list, tuple)) and not texts:
        raise ValueError("the training data is empty")
    if pairs is not None:
        pairs = list(pairs)
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2
                                and all(isinstance(s, str) for s in p) for p in pairs):
            raise ValueError("pairs must be a non-empty list of (text, positive) string pairs")

    tok = model.tokenizer
    stream = ChunkStream(texts, tok, seq_len, seed)
    instr = tok.encode(instruction, add_bos=True, add_eos=False) if instruction else (
        [tok.bos_id] if tok.bos_id is not None else [])
    eos = tok.eos_id
    # an SSCL row is the instruction, the text and EOS: the text is cut to fit the model's
    # positions too (GPT-2's table, a sliding window), not only to sscl_max_tokens
    sscl_cap = max(0, min(sscl_max_tokens, limit - len(instr) - 1))
    if sscl_cap < 1 and any(st.weights[1] > 0 for st in stage_list):
        raise ValueError(f"the instruction takes {len(instr)} tokens (BOS included), which "
                         f"leaves no room for a text and EOS in the model's {limit} positions "
                         "for SSCL: shorten instruction or set weights={'sscl': 0}")

    def sscl_rows(bodies: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BOS + instruction + text (at most sscl_cap tokens) + EOS; pooling starts at the
        text."""
        rows = [np.concatenate([instr, b[:sscl_cap], [eos]]).astype(np.int32) for b in bodies]
        ids, lengths = pad_rows(rows)
        return ids, lengths, np.full(len(rows), len(instr), np.int32)

    body_start = 1 if tok.bos_id is not None else 0

    pair_rows = None
    if pairs is not None:
        enc_a = tok.encode_batch([a for a, _ in pairs], add_bos=False, add_eos=False)
        enc_b = tok.encode_batch([b for _, b in pairs], add_bos=False, add_eos=False)
        pair_rows = [(np.asarray(a[:sscl_cap], np.int32), np.asarray(b[:sscl_cap], np.int32))
                     for a, b in zip(enc_a, enc_b, strict=True)]

    def micro(chunks: list[np.ndarray], stage: Stage, micro_seed: int, train: bool,
              grad_scale: float, pair_index: int | None) -> dict[str, float]:
        """One micro-batch. SSCL rows: the pairs from ``pair_index`` on when it is given (a
        training micro-batch with ``pairs``), else the chunks' own texts, the positive being
        the same row (dropout makes the two views differ in training; none in evaluation)."""
        masked, mlen = pad_rows(chunks)
        b = bl = bp = None
        if pair_rows is not None and pair_index is not None:
            picked = [pair_rows[(pair_index + i) % len(pair_rows)] for i in range(len(chunks))]
            a, al, ap = sscl_rows([x for x, _ in picked])
            b, bl, bp = sscl_rows([y for _, y in picked])
        else:
            a, al, ap = sscl_rows([c[body_start:] for c in chunks])
        w = stage.weights
        return trainer.micro_step(masked, mlen, a, al, ap, b, bl, bp, float(w[0]), float(w[1]),
                                  float(w[2]), 1 if stage.pooling == "mean" else 0, grad_scale,
                                  micro_seed, train)

    eval_chunks: list[list[np.ndarray]] = []
    if eval_data is not None:
        es = ChunkStream(read_texts(eval_data), tok, seq_len, seed + 1, what="eval_data")
        eval_chunks = [es.take(batch_size) for _ in range(eval_batches)]
    mask_id = mask_token_id(model)
    if not 0 <= mask_id < model.config.vocab_size:
        raise ValueError(f"the tokenizer's mask token id {mask_id} is outside the model's "
                         f"vocabulary of {model.config.vocab_size}")
    config = dict(
        mask_token_id=mask_id, use_spans=spec["use_spans"],
        all_span_frac=spec["all_span_frac"], temperature=temperature,
        lora_dropout=lora_dropout, resid_dropout=resid_dropout,
        full_finetune=int(full_finetune), lr=lr, weight_decay=weight_decay,
        clip_norm=clip_norm, total_steps=steps,
        warmup_steps=warmup_steps if warmup_steps is not None else min(100, steps // 10),
    )

    state = meta = None
    base_digest = None
    if resume:
        assert checkpoint_path is not None
        state, meta = _load_checkpoint(checkpoint_path)
        if meta.get("model") != _fingerprint(model):
            raise ValueError(f"{checkpoint_path}: the checkpoint was made for another model")
        was_full = bool(meta.get("full_finetune", not meta.get("lora")))
        if was_full != full_finetune:
            kind = "a full fine-tune" if was_full else "a LoRA run"
            raise ValueError(f"{checkpoint_path}: the checkpoint is {kind}; resume it with "
                             f"full_finetune={was_full}")
        # another preset or seed would continue a different run than the one checkpointed
        differ = [f"{key}={meta[key]!r} (this call: {key}={now!r})"
                  for key, now in (("preset", preset), ("seed", seed))
                  if key in meta and meta[key] != now]
        if differ:
            raise ValueError(f"{checkpoint_path}: the checkpoint was made with "
                             f"{', '.join(differ)}; resume with the same settings")
        if steps < meta["step"]:
            raise ValueError(f"steps={steps} is below the step of the checkpoint in "
                             f"{checkpoint_path} ({meta['step']}); resume with steps >= "
                             f"{meta['step']}")
        if not full_finetune:
            lora = meta.get("lora")
            if not (isinstance(lora, list) and len(lora) == 3
                    and all(isinstance(x, (int, float)) for x in lora)):
                raise ValueError(f"{checkpoint_path}: not a readable magnet checkpoint "
                                 f"(meta lora is {lora!r})")
            if isinstance(meta.get("base_weights"), dict):
                base_digest = _base_weights_digest(model)
                _check_base_weights(meta["base_weights"], base_digest, checkpoint_path)
        stream.skip_to(int(meta["position"]))  # a stream shorter than that fails here

    attached = model._c.lora_info()
    if resume and meta is not None:
        # the checkpoint's adapters (or weights) replace attached adapters: put those back if
        # it does not load (arrays of another size)
        previous = model._c.lora_state_dict() if attached else None
        try:
            if not full_finetune:  # the checkpoint holds the adapters
                lora = meta["lora"]
                model._c.attach_lora(int(lora[0]), float(lora[1]), int(lora[2]), seed)
            elif attached:  # the checkpoint holds every weight; adapters would sit on top
                model._c.detach_lora()
            trainer = _C.Trainer(model._c, config)
            trainer.load_state(state)
        except BaseException:  # a state of another size, or out of memory, or Ctrl-C
            if attached and previous is not None:
                model._c.attach_lora(attached[0], float(attached[1]), attached[2], seed)
                model._c.load_lora_state_dict(previous)
            elif model._c.lora_info():
                model._c.detach_lora()
            raise
    else:
        fresh = False  # adapters attached here, detached again if the trainer cannot be made
        if attached and not full_finetune and (
                attached[0] == lora_rank and math.isclose(attached[1], lora_alpha, rel_tol=1e-6)
                and attached[2] == targets):
            pass  # adapters of the same shape are attached: training continues from them
        elif attached:
            # never throw away a previous adaptation: fold it into the weights, then train anew
            # (a trainer that then runs out of memory leaves it folded in: the model computes
            # what it computed before, with no adapters attached)
            model._c.merge_lora()
            if not full_finetune:
                model._c.attach_lora(lora_rank, float(lora_alpha), targets, seed)
                fresh = True
        elif not full_finetune:
            model._c.attach_lora(lora_rank, float(lora_alpha), targets, seed)
            fresh = True
        try:
            trainer = _C.Trainer(model._c, config)
        except BaseException:  # out of memory, or Ctrl-C
            if fresh:
                model._c.detach_lora()
            raise
    if checkpoint_path is not None and not full_finetune and base_digest is None:
        # the weights under the adapters, after any merge above: a resume must find the same
        base_digest = _base_weights_digest(model)
    start = 0
    scheme = SEED_SCHEME
    result = AdaptResult()
    if meta is not None:
        start = int(meta["step"])
        result.history = list(meta.get("history", []))
        result.eval_history = list(meta.get("eval_history", []))
        scheme = int(meta.get("seed_scheme", 1))

    def evaluate(step: int) -> None:
        stage = _stage_at(stage_list, step, steps)
        sums: dict[str, float] = {"mntp": 0.0, "sscl": 0.0, "msg": 0.0}
        for i, chunks in enumerate(eval_chunks):
            # every loss on eval_data: its chunks are the SSCL rows too, pairs= or not
            out = micro(chunks, stage, _seed_of((seed + 1) & _MASK64, i, 0, 1, scheme), False,
                        1.0, None)
            for k in sums:
                sums[k] += out[k] / len(eval_chunks)
        result.eval_history.append({"step": step, **sums})

    if (meta is not None and eval_chunks and start > 0
            and (start % checkpoint_every == 0 or start == steps)
            and all(e["step"] != start for e in result.eval_history)):
        evaluate(start)  # the run was cut off between its checkpoint and this evaluation

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"adapt[{preset}]", unit="step")
    t_start = time.perf_counter()
    pending: dict[str, Any] | None = None  # a checkpoint's metadata, not yet written

    def diverged(step: int) -> str:
        """_diverged's text for this run: a pending checkpoint is not known good (and not
        written); a file there is this run's if it wrote it or resumed from it."""
        found = checkpoint_path is not None and (checkpoint_path / "checkpoint.npz").is_file()
        return _diverged(step, start, checkpoint_path if found else None,
                         result.checkpoint is not None or meta is not None)

    def flush(state: dict[str, Any]) -> None:
        """Write the pending checkpoint with ``state``, the trainer's state at its step."""
        nonlocal pending
        assert checkpoint_path is not None and pending is not None
        # taken first: a write cut off (Ctrl-C, a full disk) is not retried later with the
        # state of another step
        written, pending = pending, None
        # the evaluations up to its step, so that a resumed run reports them all
        written["eval_history"] = [e for e in result.eval_history
                                   if e["step"] <= written["step"]]
        result.checkpoint = str(_save_checkpoint(checkpoint_path, state, written))

    # the trainer's state at the pending checkpoint's step, taken before the step that may move
    # past it; None while the trainer is still at that step
    held: dict[str, Any] | None = None
    try:
        for step in range(start, steps):
            stage = _stage_at(stage_list, step, steps)
            t0 = time.perf_counter()
            totals = {"mntp": 0.0, "sscl": 0.0, "msg": 0.0}
            tokens = 0
            for k in range(grad_accum):
                chunks = stream.take(batch_size)
                first_pair = (step * grad_accum + k) * batch_size  # pairs run on across steps
                out = micro(chunks, stage, _seed_of(seed, step, k, grad_accum, scheme), True,
                            1.0 / grad_accum, first_pair if pair_rows is not None else None)
                for key in totals:
                    totals[key] += out[key] / grad_accum
                tokens += out["tokens"]
            w = stage.weights
            loss = w[0] * totals["mntp"] + w[1] * totals["sscl"] + w[2] * totals["msg"]
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss} at step {step}{diverged(step)}")
            # the weights of a pending checkpoint have just given a finite loss; it is written
            # once their gradient is finite too (else resuming would fail there again)
            held = trainer.state() if pending is not None else None
            try:
                grad_norm, lr_used = trainer.apply()
            except ValueError as e:  # the C trainer refuses a non-finite gradient or update
                if "not finite" not in str(e):
                    raise
                if held is not None and "gradient" not in str(e):
                    flush(held)
                held = None
                raise FloatingPointError(f"{e}{diverged(step + 1)}") from None
            if held is not None:
                flush(held)
                held = None
            dt = time.perf_counter() - t0
            record = {"step": step, "loss": loss, **totals, "lr": lr_used,
                      "grad_norm": grad_norm, "tokens_per_s": tokens / dt if dt > 0 else 0.0}
            result.history.append(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(mntp=f"{totals['mntp']:.3f}", sscl=f"{totals['sscl']:.3f}",
                                msg=f"{totals['msg']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            done = step + 1
            if checkpoint_path is not None and (done % checkpoint_every == 0 or done == steps):
                meta_out = {"step": done, "position": stream.position, "seed": seed,
                            "seed_scheme": scheme,
                            "preset": preset, "model": _fingerprint(model),
                            "lora": list(model._c.lora_info() or ()),
                            "full_finetune": bool(full_finetune),
                            "history": list(result.history)}
                if base_digest is not None:
                    meta_out["base_weights"] = base_digest
                # written once the next step's loss and gradient show these weights are sound
                # (a step can leave finite weights that give a NaN loss); the last step's after
                # its evaluation (its weights were checked finite), as is any when the run
                # stops for another reason
                pending = meta_out
            if callback is not None:
                callback(record)
            if eval_chunks and (done % checkpoint_every == 0 or done == steps):
                evaluate(done)
            if done == steps:
                # no next step checks the last one's weights: the evaluation, or a forward
                # pass over the last micro-batch, does (finite weights can give NaN logits)
                final = (result.eval_history[-1] if eval_chunks else
                         micro(chunks, stage, _seed_of(seed, step, 0, 1, scheme), False, 1.0, None))
                if not all(math.isfinite(final[k]) for k in ("mntp", "sscl", "msg")):
                    raise FloatingPointError(
                        f"the weights after the last step give a non-finite loss "
                        f"{ {k: final[k] for k in ('mntp', 'sscl', 'msg')} }"
                        f"{diverged(done)}")
                if pending is not None:
                    flush(trainer.state())
    except FloatingPointError:
        raise
    except BaseException as stopped:
        # interrupted (a callback, Ctrl-C): the pending checkpoint's weights are as sound as any
        # the run checkpointed at once. A Ctrl-C that arrived during trainer.apply() is raised
        # when it returns, one step past them: then `held` has them.
        if pending is not None:
            due = pending["step"]
            try:
                flush(held if held is not None else trainer.state())
            except Exception as e:  # e.g. the adapters were merged away meanwhile
                note = f"magnet: the checkpoint due at step {due} could not be written: {e}"
                if hasattr(stopped, "add_note"):  # Python 3.11+
                    stopped.add_note(note)
                else:
                    warnings.warn(note, RuntimeWarning, stacklevel=2)
        raise
    finally:
        if bar is not None:
            bar.close()
    result.steps = steps
    result.wall_time_s = time.perf_counter() - t_start
    return result
