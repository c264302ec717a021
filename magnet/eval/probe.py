"""Linear probes on frozen token vectors.

Word vectors (:func:`word_vectors`). A sentence's words are joined with single spaces and the
text runs all-CONTEXT (bidirectional) through the model, as ``Model.embed(level="token")`` lays
it out: ``[BOS] + text tokens``, no instruction, no EOS. Token t's vector is the final hidden
state (after the final norm) at position t-1, the MNTP convention, so the first text token's
vector is BOS's state. A word's vector is the vector of its **first sub-token**: the first token
whose character span overlaps the word and is not a bare word-boundary marker (``▁``, ``Ġ`` or
whitespace, which some SentencePiece vocabularies emit as a token of its own; ``embed`` shows the
llama2.c tokenizer's space as ``▁`` too); a word covered only by such markers falls back to the
first overlapping token. Words past ``max_length`` tokens are dropped and counted.

The probe (:func:`train_probe`) is softmax regression trained in the C core
(``magnet._C.probe_train``, csrc/model/probe.c): features standardised per dimension (the scaling
folded back into W and b), W and b from zero, AdamW (betas 0.9/0.999, eps 1e-8, decoupled weight
decay on W only), a constant learning rate, a fixed number of epochs, and the minibatch order of
each epoch a permutation drawn from ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from magnet import _C
from magnet.model import Model

# word-boundary markers a tokenizer may emit as a bare token: SentencePiece's "▁" (as embed
# shows every tokenizer's, the llama2.c one's included), GPT-2 byte level's "Ġ" (space) and "Ċ"
# (newline)
_MARKERS = ("\u2581", "\u0120", "\u010a")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
SEED_LIMIT = 1 << 64  # seeds are 0 <= seed < 2**64 in every task (the C core reads a uint64)


def check_seed(seed: object) -> None:
    """A ValueError (TypeError for a non-integer) naming the seed unless 0 <= seed < 2**64."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {int(seed)}")


def check_probe_settings(lr: float, weight_decay: float, seed: object) -> None:
    """ValueError unless ``lr`` and ``weight_decay`` are numbers in [0, float32 max] (NaN and
    infinities fail) and ``seed`` is a valid seed (:func:`check_seed`)."""
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not 0 <= value <= _FLOAT32_MAX:  # NaN fails too; the C core trains in float32
            raise ValueError(f"{name} must be a finite number >= 0 (float32), got {value}")
    check_seed(seed)


@dataclass
class TokenVectors:
    """Token-level vectors of one text: ``vectors`` [T, D], token strings and char offsets."""

    vectors: np.ndarray
    tokens: list[str]
    offsets: list[tuple[int, int]]


def token_vectors(model: Model, texts: Sequence[str], batch_size: int = 32,
                  max_length: int | None = None, progress: bool = False) -> list[TokenVectors]:
    """MNTP-convention token vectors of ``texts`` (see the module docstring).

    Runs ``model.embed(level="token")`` (magnet/embedding.py).
    """
    if max_length is None:
        max_length = model.config.max_positions if model.config.max_positions > 0 else 1 << 30
    res = model.embed(list(texts), level="token", batch_size=batch_size, max_length=max_length,
                      show_progress_bar=progress)
    return [TokenVectors(np.asarray(r.vectors), list(r.tokens), list(r.offsets)) for r in res]


def _is_marker(token: str) -> bool:
    stripped = token
    for m in _MARKERS:
        stripped = stripped.replace(m, "")
    return not stripped.strip()


def first_subtokens(words: Sequence[str], tokens: Sequence[str],
                    offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Index of each word's first sub-token (-1 where the word has no token, e.g. after
    truncation), for words joined by single spaces (word i starts after words[:i] and i spaces)."""
    result = []
    start = 0
    t = 0
    n = len(tokens)
    for w in words:
        end = start + len(w)
        while t < n and offsets[t][1] <= start:
            t += 1
        pick = -1
        fallback = -1
        j = t
        while j < n and offsets[j][0] < end:
            if offsets[j][1] > start:
                if fallback < 0:
                    fallback = j
                if not _is_marker(tokens[j]):
                    pick = j
                    break
            j += 1
        result.append(pick if pick >= 0 else fallback)
        start = end + 1
    return result


def word_vectors(model: Model, sentences: Sequence[Sequence[str]], batch_size: int = 32,
                 max_length: int | None = None, progress: bool = False
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sentence: the vectors of its kept words [K_i, D] and the indices of those words
    (words past the length limit are dropped)."""
    texts = [" ".join(ws) for ws in sentences]
    tvs = token_vectors(model, texts, batch_size, max_length, progress)
    vecs, kept = [], []
    for ws, tv in zip(sentences, tvs, strict=True):
        idx = np.asarray(first_subtokens(ws, tv.tokens, tv.offsets), dtype=np.int64)
        keep = np.flatnonzero(idx >= 0)
        vecs.append(np.asarray(tv.vectors[idx[keep]], dtype=np.float32))
        kept.append(keep)
    return vecs, kept


@dataclass
class Probe:
    """A trained softmax-regression probe: ``W`` [C, D], ``b`` [C], class names, and the mean
    training loss of each epoch."""

    W: np.ndarray
    b: np.ndarray
    classes: list[str]
    epoch_loss: list[float]

    def predict(self, X: np.ndarray) -> list[str]:
        """Class names of the rows of ``X`` [N, D] (argmax, in C)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.W.shape[1]:
            raise ValueError(f"X must be [N, {self.W.shape[1]}], got {X.shape}")
        if len(X) == 0:
            return []
        pred = _C.probe_predict(X, self.W, self.b)
        return [self.classes[i] for i in pred]


def train_probe(X: np.ndarray, labels: Sequence[str], epochs: int = 10, lr: float = 5e-3,
                batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0,
                standardize: bool = True, classes: Sequence[str] | None = None) -> Probe:
    """Train a linear probe on ``X`` [N, D] for string ``labels`` (in C; see the module doc).

    ``classes``: the label set (default: the sorted distinct labels). ``lr`` and
    ``weight_decay``: finite, >= 0; ``seed``: 0 <= seed < 2**64."""
    check_probe_settings(lr, weight_decay, seed)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] != len(labels):
        raise ValueError(f"X must be [N, D] with N = {len(labels)} labels, got {X.shape}")
    if len(labels) == 0:
        raise ValueError("train_probe: no training rows (0 labelled words)")
    names = sorted(set(labels)) if classes is None else list(classes)
    index = {c: i for i, c in enumerate(names)}
    missing = {lab for lab in labels if lab not in index}
    if missing:
        raise ValueError(f"labels {sorted(missing)[:5]} are not among the classes")
    y = np.fromiter((index[lab] for lab in labels), dtype=np.int32, count=len(labels))
    config: dict[str, Any] = dict(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr),
                                  weight_decay=float(weight_decay), seed=int(seed),
                                  standardize=int(bool(standardize)))
    W, b, losses = _C.probe_train(X, y, len(names), config)
    return Probe(W, b, names, [float(v) for v in losses])
