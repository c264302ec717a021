"""Metrics of the evaluation suite, each a small pure function on plain Python / NumPy data.

- :func:`spearman`: Pearson correlation of the ranks, ties given their average rank (as
  ``scipy.stats.spearmanr``); :func:`pearson`: the sample correlation coefficient. Both follow
  scipy on odd input: NaN for a NaN in either sequence or a constant one; for fewer than 2 pairs
  spearman is NaN (as ``spearmanr``) and pearson raises (as ``pearsonr``).
- :func:`entity_scores`: chunk-level precision, recall and F1 with seqeval's default
  (CoNLL ``conlleval``) conventions: a chunk is (type, start, end); an ``I-X`` after ``O`` or after
  another type starts a chunk; a predicted chunk counts only when type, start and end all match.
  IOB1 input is converted to IOB2 first (:func:`iob1_to_iob2`).
- :func:`accuracy`: share of equal labels.
- :func:`perplexity`: ``exp(total negative log-likelihood / token count)`` (natural log).
- :func:`repeated_ngram_share` and :func:`repeated_sentence_share`: repetition within one
  continuation; :func:`repetition_scores` averages them over continuations (see their docs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values all get the mean of the ranks they span (all NaN when
    ``x`` holds a NaN, as scipy's ``rankdata``)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"rankdata needs a 1-D sequence, got shape {a.shape}")
    if np.isnan(a).any():  # scipy's nan_policy="propagate": NaN has no rank
        return np.full(len(a), np.nan)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    # groups of equal values: [start, end) in sorted order share rank (start + 1 + end) / 2.
    # Compared, not subtracted: np.diff of two equal infinities is NaN, which would split them
    edges = np.flatnonzero(sorted_a[1:] != sorted_a[:-1]) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(a)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def _unit_centred(a: np.ndarray) -> np.ndarray | None:
    """``a`` centred and scaled to unit norm, or None when it is constant or not finite.
    Scaled by its largest magnitude first, so no square overflows (1e200) or underflows."""
    top = float(np.max(np.abs(a)))
    if not math.isfinite(top) or top == 0.0:
        return None
    d = a / top
    d = d - d.mean()
    top = float(np.max(np.abs(d)))
    if top == 0.0:
        return None
    d = d / top
    return d / math.sqrt(float(np.dot(d, d)))


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's r of two equally long sequences (NaN when either is constant or holds a NaN or
    an infinity, as ``scipy.stats.pearsonr``)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson needs two 1-D sequences of one length, got {a.shape}, {b.shape}")
    if len(a) < 2:
        raise ValueError("pearson needs at least 2 pairs")
    ua = _unit_centred(a)
    ub = _unit_centred(b)
    if ua is None or ub is None:
        return float("nan")
    return max(-1.0, min(1.0, float(np.dot(ua, ub))))


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties handled as scipy does; NaN when
    either sequence holds a NaN, scipy's default ``nan_policy="propagate"``, and for fewer than
    2 pairs, as ``scipy.stats.spearmanr``)."""
    rx, ry = rankdata(x), rankdata(y)
    if len(rx) < 2 and len(rx) == len(ry):  # unequal lengths still raise, in pearson
        return float("nan")
    return pearson(rx, ry)


def accuracy(gold: Sequence[object], pred: Sequence[object]) -> float:
    """Share of positions where ``pred`` equals ``gold`` (sequences of one length)."""
    if len(gold) != len(pred):
        raise ValueError(f"accuracy: {len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("accuracy of an empty sequence")
    return sum(1 for g, p in zip(gold, pred, strict=True) if g == p) / len(gold)


def _split_tag(tag: str) -> tuple[str, str]:
    """('B'|'I'|'E'|'S'|'O', type) of a tag such as ``B-PER`` or ``O``."""
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) > 1 and tag[1] in "-_":
        return tag[0], tag[2:]
    return tag[0], ""


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 (``I-X`` starts a chunk unless it follows ``X``; ``B-X`` only between two adjacent
    chunks of one type) to IOB2 (every chunk starts with ``B-X``)."""
    out = []
    prev_type = None
    for tag in tags:
        prefix, typ = _split_tag(tag)
        if prefix == "I" and prev_type != typ:
            out.append(f"B-{typ}")
        else:
            out.append(tag)
        prev_type = typ if prefix != "O" else None
    return out


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
    # seqeval.metrics.sequence_labeling.end_of_chunk (the conlleval rules)
    return ((prev_tag == "E") or (prev_tag == "S")
            or (prev_tag == "B" and tag in ("B", "S", "O"))
            or (prev_tag == "I" and tag in ("B", "S", "O"))
            or (prev_tag != "O" and prev_tag != "." and prev_type != typ))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
    # seqeval.metrics.sequence_labeling.start_of_chunk
    return ((tag == "B") or (tag == "S")
            or (prev_tag == "E" and tag in ("E", "I"))
            or (prev_tag == "S" and tag in ("E", "I"))
            or (prev_tag == "O" and tag in ("E", "I"))
            or (tag != "O" and tag != "." and prev_type != typ))


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks (type, first, last) of one IOB2/IOBES tag sequence, inclusive indices, as
    seqeval's default (non-strict) mode extracts them."""
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        t, typ = _split_tag(tag)
        if _end_of_chunk(prev_tag, t, prev_type, typ):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, t, prev_type, typ):
            begin = i
        prev_tag, prev_type = t, typ
    return chunks


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  scheme: str = "iob2") -> dict[str, float]:
    """Micro precision, recall and F1 (0..1) of predicted chunks over sentences.

    ``gold`` and ``pred``: per sentence its tag list. ``scheme="iob1"`` converts both from IOB1
    first. Returns ``precision``, ``recall``, ``f1``, and the counts ``true``, ``predicted``,
    ``correct``. P = correct / predicted, R = correct / true, F1 = 2PR / (P + R); 0 where a
    denominator is 0.
    """
    if len(gold) != len(pred):
        raise ValueError(f"entity_scores: {len(gold)} gold sentences but {len(pred)} predicted")
    if scheme not in ("iob1", "iob2"):
        raise ValueError(f"scheme must be 'iob1' or 'iob2', got {scheme!r}")
    n_true = n_pred = n_correct = 0
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"entity_scores: sentence {i} has {len(g)} gold tags but "
                             f"{len(p)} predicted")
        if scheme == "iob1":
            g, p = iob1_to_iob2(g), iob1_to_iob2(p)
        ge = set(get_entities(g))
        pe = set(get_entities(p))
        n_true += len(ge)
        n_pred += len(pe)
        n_correct += len(ge & pe)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true": n_true,
            "predicted": n_pred, "correct": n_correct}


def perplexity(nll_sum: float, count: int) -> float:
    """``exp(nll_sum / count)``: the perplexity of ``count`` tokens whose negative natural-log
    likelihoods sum to ``nll_sum``."""
    if count <= 0:
        raise ValueError("perplexity of zero tokens")
    return math.exp(nll_sum / count)


# the closing quote or bracket a sentence end may carry: straight quotes, the curly closing
# quotes U+201D and U+2019 of typeset text, the guillemet U+00BB that closes French quotes, ")"
# and "]"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019\u00bb)\]])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: cut after ``.``, ``!`` or ``?`` (possibly followed by one closing
    quote or bracket: ``"``, ``'``, ``”``, ``’``, ``»``, ``)`` or ``]``) followed by whitespace,
    and at newlines; each stripped, whitespace runs collapsed to one space, empty pieces
    dropped."""
    parts = _SENTENCE_END.split(text)
    return [" ".join(p.split()) for p in parts if p and p.strip()]


def repeated_ngram_share(text: str, n: int = 4) -> float | None:
    """``1 - unique n-grams / total n-grams`` over the whitespace-separated words of ``text``
    (case-sensitive); None when the text has fewer than ``n`` words."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def repeated_sentence_share(text: str) -> float | None:
    """Share of the sentences of ``text`` (:func:`split_sentences`) equal to an earlier sentence
    of the same text; None when it has no sentence."""
    sentences = split_sentences(text)
    if not sentences:
        return None
    seen: set[str] = set()
    repeated = 0
    for s in sentences:
        if s in seen:
            repeated += 1
        seen.add(s)
    return repeated / len(sentences)


def repetition_scores(texts: Sequence[str], n: int = 4) -> dict[str, float | int | None]:
    """Means over continuations of :func:`repeated_ngram_share` and
    :func:`repeated_sentence_share` (continuations where a share is None are left out of that
    mean; ``ngram_scored`` / ``sentence_scored`` count the rest). A mean over no continuation is
    undefined: None (``null`` in the CLI's JSON)."""
    grams = [r for r in (repeated_ngram_share(t, n) for t in texts) if r is not None]
    sents = [r for r in (repeated_sentence_share(t) for t in texts) if r is not None]
    return {
        f"repeated_{n}gram_share": float(np.mean(grams)) if grams else None,
        "repeated_sentence_share": float(np.mean(sents)) if sents else None,
        "ngram_scored": len(grams),
        "sentence_scored": len(sents),
        "continuations": len(texts),
    }
