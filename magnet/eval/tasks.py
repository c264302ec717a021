"""The evaluation tasks; each takes a model and data paths and returns a plain dict.

- :func:`evaluate_sts`: Spearman and Pearson (x100) of cosine similarity against gold scores.
- :func:`evaluate_tagging`: a linear probe on frozen word vectors (:mod:`magnet.eval.probe`),
  entity F1 (x100) for NER and chunking, accuracy (x100) for POS.
- :func:`evaluate_infill`: perplexity of held-out spans with both contexts and left context only.
- :func:`evaluate_retention`: causal perplexity over sliding windows.
- :func:`evaluate_repetition`: repetition in continuations of prompts (``model.generate``).

The forward passes, the probe's training and the cross-entropy run in the C core; these
functions read files, lay out ids and report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from magnet import _C
from magnet.eval import metrics
from magnet.eval.probe import check_probe_settings, check_seed, train_probe, word_vectors
from magnet.eval.readers import (
    STSPairs,
    TaggedSentence,
    read_conll2000,
    read_conll2003,
    read_conllu,
    read_senteval_sts,
    read_sick,
    read_sts_benchmark,
    read_wikitext,
    wikitext_paragraphs,
)
from magnet.model import Model
from magnet.tokenizer import Tokenizer

CONTEXT, SPAN = 0, 1
IGNORE = -100
DEFAULT_INSTRUCTION = "Given the sentence, find its representation: "


def _check_count(name: str, value: int | None, allow_none: bool = True) -> None:
    """``value`` must be an int >= 1 (or None where ``allow_none``); a ValueError naming it."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _bar(items: Iterable[Any], progress: bool, desc: str, total: int | None = None
         ) -> Iterable[Any]:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total)


# ---------------------------------------------------------------------------------------------
# STS


def sentence_embeddings(encoder: Any, texts: Sequence[str], batch_size: int = 32,
                        pooling: str = "last", instruction: str | None = DEFAULT_INSTRUCTION,
                        progress: bool = False) -> np.ndarray:
    """Sentence vectors [N, D] of ``texts``.

    ``encoder``: a magnet Model (``Model.embed(level="sentence")``: all-CONTEXT, instruction
    prefix, EOS appended, ``pooling`` "last" or "mean"), or any object with a
    sentence-transformers-style ``encode(texts, batch_size=...)`` (baselines such as
    all-MiniLM-L6-v2; ``pooling`` and ``instruction`` do not apply to them).
    """
    texts = list(texts)
    if hasattr(encoder, "embed"):
        return np.asarray(encoder.embed(texts, level="sentence", pooling=pooling,
                                        instruction=instruction, batch_size=batch_size,
                                        show_progress_bar=progress), dtype=np.float32)
    if hasattr(encoder, "encode"):
        return np.asarray(encoder.encode(texts, batch_size=batch_size,
                                         show_progress_bar=progress), dtype=np.float32)
    raise TypeError(f"cannot embed sentences with a {type(encoder).__name__}")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def score_sts(encoder: Any, pairs: STSPairs, batch_size: int = 32, pooling: str = "last",
              instruction: str | None = DEFAULT_INSTRUCTION, progress: bool = False
              ) -> dict[str, float]:
    """Spearman and Pearson (x100) of the cosine similarities of one file's pairs."""
    texts = list(dict.fromkeys([*pairs.s1, *pairs.s2]))
    vecs = sentence_embeddings(encoder, texts, batch_size, pooling, instruction, progress)
    where = {t: i for i, t in enumerate(texts)}
    a = vecs[[where[t] for t in pairs.s1]]
    b = vecs[[where[t] for t in pairs.s2]]
    sims = cosine_rows(a, b)
    # one pair (--max-pairs 1, a one-line file) has no correlation: spearman is NaN there (as
    # scipy's spearmanr), pearson raises (as pearsonr), so ask it only of two pairs or more
    r = metrics.pearson(sims, pairs.scores) if len(pairs) >= 2 else float("nan")
    return {"spearman": _percent(metrics.spearman(sims, pairs.scores)), "pearson": _percent(r),
            "pairs": len(pairs)}


def _percent(r: float) -> float | None:
    """100 r, or None where r is undefined (NaN: constant or NaN similarities, one pair)."""
    return None if np.isnan(r) else 100 * r


def _mean_or_none(values: list[float | None]) -> float | None:
    """The mean, or None when any value is undefined."""
    return None if any(v is None for v in values) else float(np.mean(values))


def load_sts(path: str | os.PathLike, fmt: str | None = None, split: str = "test"
             ) -> list[STSPairs]:
    """The pair files of an STS data set at ``path``.

    ``fmt``: "stsb" (an STS Benchmark csv, or its directory: ``sts-<split>.csv``), "sick"
    (``SICK.txt`` or its directory; ``split`` train/trial/test), "senteval" (an STS12-16 year
    directory of ``STS.input.*.txt``); None guesses from the path.
    """
    p = Path(path)
    if fmt is None:
        if p.is_dir():
            if list(p.glob("STS.input.*.txt")):
                fmt = "senteval"
            elif (p / "SICK.txt").is_file():
                fmt = "sick"
            else:
                fmt = "stsb"
        else:
            fmt = "sick" if p.name.upper().startswith("SICK") else "stsb"
    if fmt == "stsb":
        return [read_sts_benchmark(p / f"sts-{split}.csv" if p.is_dir() else p)]
    if fmt == "sick":
        return [read_sick(p / "SICK.txt" if p.is_dir() else p, split.upper())]
    if fmt == "senteval":
        return read_senteval_sts(p)
    raise ValueError(f"unknown STS format {fmt!r}; use stsb, sick or senteval")


def evaluate_sts(encoder: Any, path: str | os.PathLike, fmt: str | None = None,
                 split: str = "test", batch_size: int = 32, pooling: str = "last",
                 instruction: str | None = DEFAULT_INSTRUCTION, max_pairs: int | None = None,
                 seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """STS: per file Spearman/Pearson x100; ``spearman``/``pearson`` = the mean over files
    (SentEval's "all" for STS12-16; the single file's score otherwise). ``max_pairs``: a seeded
    random subset of each file. A correlation that is undefined (constant or NaN similarities,
    a file of one pair) is None, and so is a mean over files that includes one."""
    check_seed(seed)
    _check_count("batch_size", batch_size, allow_none=False)
    _check_count("max_pairs", max_pairs)
    t0 = time.perf_counter()
    files = load_sts(path, fmt, split)
    per = {}
    for f in files:
        if max_pairs is not None and len(f) > max_pairs:
            pick = np.sort(np.random.default_rng(seed).choice(len(f), max_pairs, replace=False))
            f = STSPairs(f.name, [f.s1[i] for i in pick], [f.s2[i] for i in pick],
                         f.scores[pick])
        per[f.name] = score_sts(encoder, f, batch_size, pooling, instruction, progress)
    return {"task": "sts", "data": os.fspath(path),
            "spearman": _mean_or_none([v["spearman"] for v in per.values()]),
            "pearson": _mean_or_none([v["pearson"] for v in per.values()]),
            "files": per,
            "pooling": pooling if hasattr(encoder, "hidden_states") else "the encoder's own",
            "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# token-level probes


@dataclass(frozen=True)
class TaggingTask:
    """A probe task: reader, default train/test file names, tag column and metric."""

    reader: Callable[[str | os.PathLike], list[TaggedSentence]]
    train: str
    test: str
    column: str
    metric: str  # "f1" or "accuracy"
    scheme: str = "iob2"  # the file's chunk scheme, for f1 tasks


TAGGING_TASKS: dict[str, TaggingTask] = {
    "conll2003-ner": TaggingTask(read_conll2003, "eng.train", "eng.testb", "ner", "f1", "iob1"),
    "conll2003-pos": TaggingTask(read_conll2003, "eng.train", "eng.testb", "pos", "accuracy"),
    "conll2003-chunk": TaggingTask(read_conll2003, "eng.train", "eng.testb", "chunk", "f1",
                                   "iob1"),
    "conll2000-chunk": TaggingTask(read_conll2000, "train.txt", "test.txt", "chunk", "f1"),
    "ud-upos": TaggingTask(read_conllu, "en_ewt-ud-train.conllu", "en_ewt-ud-test.conllu",
                           "upos", "accuracy"),
}


def _subsample(sents: list[TaggedSentence], n: int | None, seed: int) -> list[TaggedSentence]:
    if n is None or n >= len(sents):
        return sents
    pick = np.sort(np.random.default_rng(seed).choice(len(sents), n, replace=False))
    return [sents[i] for i in pick]


def _tags(sent: TaggedSentence, task: TaggingTask) -> list[str]:
    tags = sent.tags[task.column]
    return metrics.iob1_to_iob2(tags) if task.scheme == "iob1" else list(tags)


def evaluate_tagging(model: Model, task: str, data: str | os.PathLike | None = None,
                     train_path: str | os.PathLike | None = None,
                     test_path: str | os.PathLike | None = None,
                     max_sentences: int | None = None, max_test_sentences: int | None = None,
                     epochs: int = 10, lr: float = 5e-3, batch_size: int = 128,
                     weight_decay: float = 0.0, seed: int = 0, embed_batch_size: int = 32,
                     progress: bool = True,
                     feature_cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Train a linear probe on the train split's word vectors, score it on the test split.

    ``data``: the data set's directory (default file names per task), or give ``train_path`` and
    ``test_path``. ``max_sentences`` / ``max_test_sentences``: seeded random subsets (the test
    default is ``max_sentences``). IOB1 files are converted to IOB2 for training and scoring.
    ``feature_cache``: a dict kept by the caller for one model and reused across calls; word
    vectors of sentence lists already in it are not computed again (the three CoNLL-2003 tasks
    read the same sentences, so they embed them once).
    Returns the score (x100) under ``score`` and ``f1``/``accuracy``, with counts.
    """
    if task not in TAGGING_TASKS:
        raise ValueError(f"unknown tagging task {task!r}; choose one of "
                         f"{', '.join(TAGGING_TASKS)}")
    spec = TAGGING_TASKS[task]
    _check_count("max_sentences", max_sentences)
    _check_count("max_test_sentences", max_test_sentences)
    _check_count("epochs", epochs, allow_none=False)
    _check_count("batch_size", batch_size, allow_none=False)
    _check_count("embed_batch_size", embed_batch_size, allow_none=False)
    check_probe_settings(lr, weight_decay, seed)
    if train_path is None or test_path is None:
        if data is None:
            raise ValueError(f"{task}: give data (the directory) or train_path and test_path")
        d = Path(data)
        train_path = train_path if train_path is not None else d / spec.train
        test_path = test_path if test_path is not None else d / spec.test
    t0 = time.perf_counter()
    train = _subsample(spec.reader(train_path), max_sentences, seed)
    test_n = max_test_sentences if max_test_sentences is not None else max_sentences
    test = _subsample(spec.reader(test_path), test_n, seed + 1)

    def features(sents: list[TaggedSentence], desc: str
                 ) -> tuple[np.ndarray, list[list[str]], list[np.ndarray], int]:
        words = [s.words for s in sents]
        # keyed by the words themselves (and the model): the tasks differ only in the tags
        # (and the model and its weights: an adapt() since changes them)
        key = (model._identity, model._adaptations, id(model.tokenizer), embed_batch_size,
               tuple(tuple(w) for w in words))
        if feature_cache is not None and key in feature_cache:
            vecs, kept = feature_cache[key]
        else:
            vecs, kept = word_vectors(model, words, embed_batch_size, progress=progress)
            if feature_cache is not None:
                feature_cache[key] = (vecs, kept)
        labels = [[_tags(s, spec)[i] for i in k] for s, k in zip(sents, kept, strict=True)]
        dropped = sum(len(s.words) - len(k) for s, k in zip(sents, kept, strict=True))
        X = np.concatenate(vecs) if vecs else np.zeros((0, model.config.hidden_size),
                                                       np.float32)
        return X, labels, kept, dropped

    X_train, y_train, _, drop_train = features(train, "train")
    if len(X_train) == 0:
        raise ValueError(f"{task}: no training words: all {drop_train} words of the "
                         f"{len(train)} train sentences were cut by the length limit")
    t_feat = time.perf_counter()
    probe = train_probe(X_train, [t for s in y_train for t in s], epochs=epochs, lr=lr,
                        batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    t_probe = time.perf_counter()
    X_test, _, kept_test, drop_test = features(test, "test")
    flat_pred = probe.predict(X_test)
    # score whole sentences: a dropped (truncated) word is predicted "O" / counted wrong
    gold_sents, pred_sents = [], []
    pos = 0
    for s, k in zip(test, kept_test, strict=True):
        gold = _tags(s, spec)
        pred = ["O" if spec.metric == "f1" else "\0"] * len(gold)
        for i in k:
            pred[i] = flat_pred[pos]
            pos += 1
        gold_sents.append(gold)
        pred_sents.append(pred)
    out: dict[str, Any] = {"task": task, "train": os.fspath(train_path),
                           "test": os.fspath(test_path), "train_sentences": len(train),
                           "test_sentences": len(test), "train_words": int(len(X_train)),
                           "test_words": sum(len(g) for g in gold_sents),
                           "dropped_words": drop_train + drop_test,
                           "classes": len(probe.classes), "epochs": epochs, "lr": lr,
                           "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed,
                           "probe_loss": probe.epoch_loss}
    if spec.metric == "f1":
        sc = metrics.entity_scores(gold_sents, pred_sents, "iob2")
        out.update(score=100 * sc["f1"], f1=100 * sc["f1"], precision=100 * sc["precision"],
                   recall=100 * sc["recall"], entities=sc["true"])
    else:
        acc = metrics.accuracy([t for s in gold_sents for t in s],
                               [t for s in pred_sents for t in s])
        out.update(score=100 * acc, accuracy=100 * acc)
    t_end = time.perf_counter()
    out["wall_s"] = {"features": (t_feat - t0) + (t_end - t_probe), "probe": t_probe - t_feat,
                     "total": t_end - t0}
    return out


# ---------------------------------------------------------------------------------------------
# perplexities


def _tokenizer(model: Any, task: str) -> Tokenizer:
    """``model.tokenizer``; a ValueError naming ``task`` when the model has none (a llama2.c
    checkpoint loaded without its tokenizer file), as ``embed`` raises for sts and the probes,
    instead of an AttributeError on None."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(f"{task} needs a tokenizer: the model has none (give its file as "
                         f"Model.from_pretrained(..., tokenizer=PATH) or --tokenizer)")
    return tok


def _token_stream(model: Model, path: str | os.PathLike, task: str = "the token stream"
                  ) -> np.ndarray:
    """All WikiText articles (detokenized), joined with a blank line (``"\\n\\n"``) between
    two articles and tokenized as one text without BOS (``task`` names the caller in the error
    of a model without a tokenizer)."""
    tok = _tokenizer(model, task)
    articles = read_wikitext(path)
    ids = tok.encode("\n\n".join(articles), add_bos=False, add_eos=False)
    return np.asarray(ids, dtype=np.int32)


def _bos(model: Model) -> int:
    tok = model.tokenizer
    first = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if first is None:
        raise ValueError("perplexity windows need a BOS or EOS token to start from")
    return int(first)


def _nll(logits: np.ndarray, rows: np.ndarray, cols: np.ndarray, labels: np.ndarray
         ) -> tuple[float, int]:
    """Summed cross-entropy (C core) of ``labels`` under ``logits[rows, cols]``."""
    picked = np.ascontiguousarray(logits[rows, cols], dtype=np.float32)
    loss_sum, count, _ = _C.op_cross_entropy(picked, np.ascontiguousarray(labels, np.int32))
    return float(loss_sum), int(count)


def infill_spans(n_windows: int, window: int, num_spans: int, span_min: int, span_max: int,
                 min_context: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeded layout of :func:`evaluate_infill`: chosen window indices (sorted), and per
    window the span's start (a position in the BOS-prefixed window) and length."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_windows, min(num_spans, n_windows), replace=False))
    lengths = rng.integers(span_min, span_max + 1, size=len(chosen))
    starts = np.array([rng.integers(1 + min_context, window - L - min_context + 1)
                       for L in lengths], dtype=np.int64)
    return chosen, starts, lengths


def evaluate_infill(model: Model, path: str | os.PathLike, num_spans: int = 200,
                    window: int = 128, span_min: int = 8, span_max: int = 32,
                    min_context: int = 16, seed: int = 0, batch_size: int = 8,
                    progress: bool = True) -> dict[str, Any]:
    """Perplexity of held-out spans of WikiText, with both contexts and with left context only.

    Layout: the test text is tokenized into one stream (see :func:`_token_stream`) and cut into
    non-overlapping windows of ``window - 1`` tokens, each prefixed with BOS. ``num_spans``
    windows are drawn without replacement (``seed``); in each one span of length uniform in
    [``span_min``, ``span_max``] starts uniformly where at least ``min_context`` tokens lie on
    either side of it. *Both*: the span's tokens are SPAN, the rest (BOS, left and right
    context) CONTEXT, one forward pass (MAGNET's unified rule); *left*: all SPAN (causal), which
    for the span's predictions equals truncating the window at the span's end. Span token i is
    predicted from the state at i-1 in both. Perplexity = exp(mean NLL over all span tokens).
    """
    # a window holds BOS, min_context tokens, the span and min_context tokens (infill_spans
    # draws the start from [1 + min_context, window - L - min_context]), so one longest span
    # fits in span_max + 2 * min_context + 1 tokens
    if not (1 <= span_min <= span_max) or window < span_max + 2 * min_context + 1:
        raise ValueError(f"need 1 <= span_min <= span_max and window >= span_max + "
                         f"2 * min_context + 1 (BOS, context, span, context), got "
                         f"span_min={span_min}, span_max={span_max}, min_context={min_context}, "
                         f"window={window}")
    _check_count("num_spans", num_spans, allow_none=False)
    _check_count("batch_size", batch_size, allow_none=False)
    check_seed(seed)
    t0 = time.perf_counter()
    stream = _token_stream(model, path, "infill")
    body = window - 1
    n_windows = len(stream) // body
    if n_windows == 0:
        raise ValueError(f"{path}: fewer than {body} tokens")
    chosen, starts, lengths = infill_spans(n_windows, window, num_spans, span_min, span_max,
                                           min_context, seed)
    bos = _bos(model)
    sums = {"both": [0.0, 0], "left": [0.0, 0]}
    batches = range(0, len(chosen), batch_size)
    for b0 in _bar(batches, progress, "infill", total=len(batches)):
        sel = slice(b0, b0 + batch_size)
        ids = np.stack([np.concatenate([[bos], stream[w * body:(w + 1) * body]])
                        for w in chosen[sel]]).astype(np.int32)
        roles = np.zeros_like(ids, dtype=np.uint8)
        rows, cols = [], []
        for r, (s, L) in enumerate(zip(starts[sel], lengths[sel], strict=True)):
            roles[r, s:s + L] = SPAN
            rows.append(np.full(L, r))
            cols.append(np.arange(s - 1, s + L - 1))
        rr, cc = np.concatenate(rows), np.concatenate(cols)
        labels = ids[rr, cc + 1]
        for name, rl in (("both", roles), ("left", np.ones_like(roles))):
            loss, count = _nll(model.logits(ids, rl), rr, cc, labels)
            sums[name][0] += loss
            sums[name][1] += count
    return {"task": "infill", "data": os.fspath(path),
            "ppl_both": metrics.perplexity(*sums["both"]),
            "ppl_left": metrics.perplexity(*sums["left"]),
            "nll_both": sums["both"][0] / sums["both"][1],
            "nll_left": sums["left"][0] / sums["left"][1],
            "spans": len(chosen), "span_tokens": int(sums["both"][1]), "window": window,
            "span_min": span_min, "span_max": span_max, "min_context": min_context,
            "seed": seed, "wall_s": time.perf_counter() - t0}


def evaluate_retention(model: Model, path: str | os.PathLike, window: int = 256,
                       stride: int = 128, max_tokens: int | None = None, batch_size: int = 4,
                       progress: bool = True) -> dict[str, Any]:
    """Causal perplexity of WikiText (all-SPAN), over sliding windows.

    The stream (:func:`_token_stream`, cut to its first ``max_tokens`` tokens when given) is read
    in windows ``[BOS] + stream[b : b + window - 1]`` for b = 0, stride, 2 stride, ...; each
    stream token is scored once, in the first window that contains it, so every token after the
    first window has at least ``window - 1 - stride`` tokens of context (Hugging Face's strided
    perplexity). Perplexity = exp(mean NLL over the scored tokens).
    """
    if not (1 <= stride <= window - 1):
        raise ValueError("need 1 <= stride <= window - 1")
    _check_count("max_tokens", max_tokens)
    _check_count("batch_size", batch_size, allow_none=False)
    t0 = time.perf_counter()
    stream = _token_stream(model, path, "retention")
    if max_tokens is not None:
        stream = stream[:max_tokens]
    if len(stream) == 0:
        raise ValueError(f"{path}: no tokens")
    bos = _bos(model)
    body = window - 1
    spans = []  # (begin, end, first scored stream index)
    scored_to = 0
    for b in range(0, len(stream), stride):
        e = min(b + body, len(stream))
        spans.append((b, e, scored_to))
        scored_to = e
        if e == len(stream):
            break
    total, count = 0.0, 0
    batches = range(0, len(spans), batch_size)
    for b0 in _bar(batches, progress, "retention", total=len(batches)):
        group = spans[b0:b0 + batch_size]
        width = 1 + max(e - b for b, e, _ in group)
        ids = np.zeros((len(group), width), np.int32)
        seg = np.full((len(group), width), -1, np.int32)
        rows, cols = [], []
        for r, (b, e, first) in enumerate(group):
            n = e - b
            ids[r, 0] = bos
            ids[r, 1:1 + n] = stream[b:e]
            seg[r, :1 + n] = 0
            # stream index j sits at column j - b + 1 and is predicted from column j - b
            js = np.arange(max(first, b), e)
            rows.append(np.full(len(js), r))
            cols.append(js - b)
        rr, cc = np.concatenate(rows), np.concatenate(cols)
        loss, c = _nll(model.logits(ids, None, seg), rr, cc, ids[rr, cc + 1])
        total += loss
        count += c
    return {"task": "retention", "data": os.fspath(path), "ppl": metrics.perplexity(total, count),
            "nll": total / count, "tokens": count, "windows": len(spans), "window": window,
            "stride": stride, "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# repetition


def repetition_prompts(model: Model, path: str | os.PathLike, num_prompts: int = 50,
                       prompt_tokens: int = 32, seed: int = 0) -> list[str]:
    """``num_prompts`` WikiText paragraphs (seeded choice among those with at least
    ``2 * prompt_tokens`` tokens), each cut after its first ``prompt_tokens`` tokens (at the
    token's character offset, so the prompt is the paragraph's own text)."""
    tok = _tokenizer(model, "repetition")
    paras = wikitext_paragraphs(path)
    encs = tok.backend.encode_batch(paras, add_special_tokens=False)
    ok = [i for i, e in enumerate(encs) if len(e.ids) >= 2 * prompt_tokens]
    if not ok:
        raise ValueError(f"{path}: no paragraph of {2 * prompt_tokens} tokens")
    pick = np.sort(np.random.default_rng(seed).choice(len(ok), min(num_prompts, len(ok)),
                                                      replace=False))
    out = []
    for k in pick:
        i = ok[int(k)]
        end = encs[i].offsets[prompt_tokens - 1][1]
        out.append(paras[i][:end])
    return out


def evaluate_repetition(model: Any, path: str | os.PathLike, num_prompts: int = 50,
                        prompt_tokens: int = 32, max_new_tokens: int = 128,
                        do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                        seed: int = 0, batch_size: int = 8, n: int = 4, samples: int = 3,
                        progress: bool = True) -> dict[str, Any]:
    """Repetition in continuations of WikiText prompts (:func:`repetition_prompts`), generated
    by ``model.generate`` (greedy unless ``do_sample``), scored by
    :func:`magnet.eval.metrics.repetition_scores`. The first ``samples`` continuations are
    returned under ``samples``."""
    if not hasattr(model, "generate"):
        raise TypeError("evaluate_repetition needs a model with generate() (magnet.Model.generate)")
    for name, value in (("num_prompts", num_prompts), ("prompt_tokens", prompt_tokens),
                        ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        _check_count(name, value, allow_none=False)
    check_seed(seed)
    t0 = time.perf_counter()
    prompts = repetition_prompts(model, path, num_prompts, prompt_tokens, seed)
    outs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for b0 in _bar(batches, progress, "generate", total=len(batches)):
        group = prompts[b0:b0 + batch_size]
        # a seed per batch: the sampler's draws are a function of (seed, step, row), so one
        # seed for all would give prompts b and b + batch_size the same draws
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  seed=(seed + b0) % 2**64)
        if do_sample:
            kw.update(temperature=temperature, top_p=top_p)
        res = model.generate(list(group), **kw)
        outs.extend([res] if isinstance(res, str) else list(res))
    scores = metrics.repetition_scores(outs, n)
    return {"task": "repetition", "data": os.fspath(path), **scores,
            "prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
            "do_sample": do_sample, "seed": seed,
            "samples": [{"prompt": p, "continuation": c}
                        for p, c in zip(prompts[:samples], outs[:samples], strict=True)],
            "wall_s": time.perf_counter() - t0}
