"""Infilling (docs/method.md, Inference): the known text is CONTEXT, each blank is SPAN.

Layout: ``[BOS] + piece_0 + blank_0 + piece_1 + ...`` in text order, positions 0, 1, 2, ... over
the whole layout (a blank of L tokens occupies L positions, so a span keeps the positions of
the tokens it replaces). BOS is the tokenizer's BOS, else its EOS (so a blank at the start of
the text has a state to be predicted from). Each known piece is tokenized on its own; a piece
after a blank continues the text, so it gets no prefix space (SentencePiece's "▁").

1. Every context token is appended in ONE model step, all CONTEXT (bidirectional: the context
   sees all context, never span tokens), its keys/values kept in the session's cache.
2. Blanks are filled left to right. For a blank at positions p..p+L-1, the first token is chosen
   from the state at p-1 (the MNTP/MSG convention: the state at i-1 predicts token i): that is a
   context token's state, or, for a blank right after another blank, the previous span's last
   token. Each chosen token is appended as SPAN at its position and its state predicts the next.
   All span tokens (the last included) are appended, so later blanks see them.

Blank length rule (when a blank's length is not given), :data:`LENGTH_CANDIDATES`:
every candidate length c is tried in one batched pass (row c: every unspecified blank has c
tokens). Blank j in row c scores::

    score(j, c) = mean_{i < c} log p(span token i) + log p(r_j | state of the last span token)

with raw model log-probabilities (no temperature or filtering), where r_j is the first token of
the known text after the blank (EOS when the blank ends the text; no term when another blank
follows directly). Each blank takes its best-scoring length (ties: the shorter), and the text is
then filled once more with the chosen lengths; those are reported in ``span_tokens``. Candidates
whose layout would not fit the model's positions (GPT-2's learned table, Mistral's sliding
window) are left out; when none fits, ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from magnet import _C
from magnet.generation import (
    MAX_POSITIONS,
    Sampling,
    continuation_text,
    eos_id_of,
    position_limit,
    resolve_seed,
)

# At run time, not for type checkers only, so that typing.get_type_hints resolves `Model`:
# magnet.model imports this module lazily (inside its methods), so there is no cycle.
from magnet.model import Model
from magnet.results import InfillResult
from magnet.tokenizer import check_text

CONTEXT, SPAN = 0, 1
LENGTH_CANDIDATES: tuple[int, ...] = (1, 2, 4, 8, 16)
DEFAULT_BLANK = "[BLANK]"


@dataclass
class FillOutput:
    """What :func:`fill_layout` produced for each row.

    ``span_ids[b][j]``: token ids of blank j in row b; ``logprobs[b][j]``: their raw
    log-probabilities; ``right_logprob[b][j]``: raw log-probability of the blank's right
    neighbour token (None when there is none); ``logits[b]``: the logits each span token was
    chosen from (float32 [n_span_tokens, V], only with ``record_logits``).
    """

    span_ids: list[list[list[int]]]
    logprobs: list[list[list[float]]]
    right_logprob: list[list[float | None]]
    logits: list[np.ndarray] | None = None


def fill_layout(model: Model, rows: Sequence[Sequence[list[int] | int]],
                sampling: Sampling | None = None, seed: int = 0,
                right_tokens: Sequence[Sequence[int | None]] | None = None,
                record_logits: bool = False) -> FillOutput:
    """Fill the blanks of token layouts, one row per layout, on one KV-cache session.

    Each row is a list of pieces: a list of token ids (known text, CONTEXT) or an int L > 0 (a
    blank of L tokens). Every row must hold the same context tokens in the same order and the
    same number of blanks (rows differ only in blank lengths: the candidate pass); the first
    piece must be context. ``right_tokens[b][j]``: the token scored after blank j (None: none).
    """
    B = len(rows)
    sampling = sampling or Sampling()
    layouts = [_positions(r) for r in rows]
    ctx = np.array([lay[0] for lay in layouts], np.int32)  # [B, C] context token ids
    ctx_pos = np.array([lay[1] for lay in layouts], np.int32)  # [B, C]
    blanks = [lay[2] for lay in layouts]  # per row: (start position, length, ctx index before)
    n_blanks = len(blanks[0])
    if ctx.ndim != 2 or any(len(b) != n_blanks for b in blanks) or (ctx != ctx[0]).any():
        raise ValueError("rows of one fill must share their context tokens and blank count")
    C = ctx.shape[1]
    # every row takes a step for each token of blank j's longest version (rows with a shorter
    # one take padding steps), so the session holds the sum over blanks of their longest
    capacity = C + sum(max(bl[j][1] for bl in blanks) for j in range(n_blanks))
    gen = _C.Generator(model._c, B, capacity, keep_hidden=True, seed=seed, eos_id=-1,
                       **sampling.c_kwargs())
    gen.append(ctx, np.zeros((B, C), np.uint8), np.zeros((B, C), np.int32), ctx_pos)
    out = FillOutput([[[] for _ in range(n_blanks)] for _ in range(B)],
                     [[[] for _ in range(n_blanks)] for _ in range(B)],
                     [[None] * n_blanks for _ in range(B)],
                     [] if record_logits else None)
    recorded: list[list[np.ndarray]] = [[] for _ in range(B)]
    for j in range(n_blanks):
        # a blank after context is predicted from that context token; after a blank, from the
        # previous span's last token, whose prediction the row already holds
        gen.logits_at(np.array([bl[j][2] for bl in blanks], np.int32))
        length = max(bl[j][1] for bl in blanks)
        for s in range(length):
            pos = np.array([bl[j][0] + s if s < bl[j][1] else -1 for bl in blanks], np.int32)
            if record_logits:
                lg = gen.logits()
                for b in range(B):
                    if pos[b] >= 0:
                        recorded[b].append(lg[b])
            tokens, logprobs = gen.span_step(pos)
            for b in range(B):
                if pos[b] >= 0:
                    out.span_ids[b][j].append(int(tokens[b]))
                    out.logprobs[b][j].append(float(logprobs[b]))
        if right_tokens is not None:
            right = np.array([-1 if r[j] is None else r[j] for r in right_tokens], np.int32)
            lp = gen.logprob(right)
            for b in range(B):
                out.right_logprob[b][j] = None if right[b] < 0 else float(lp[b])
    if out.logits is not None:
        out.logits.extend(np.stack(r) if r else np.zeros((0, model.config.vocab_size), np.float32)
                          for r in recorded)
    return out


def _positions(pieces: Sequence[list[int] | int]
               ) -> tuple[list[int], list[int], list[tuple[int, int, int]]]:
    """Context ids, their positions, and per blank (start, length, context index before it or
    -1 when the previous piece is a blank)."""
    ids: list[int] = []
    pos: list[int] = []
    blanks: list[tuple[int, int, int]] = []
    p = 0
    prev_blank = True
    for piece in pieces:
        if isinstance(piece, (int, np.integer)):
            if piece <= 0:
                raise ValueError(f"a blank needs a length >= 1, got {piece}")
            if p == 0:
                raise ValueError("a layout must start with context (BOS)")
            blanks.append((p, int(piece), -1 if prev_blank else len(ids) - 1))
            p += int(piece)
            prev_blank = True
        else:
            ids.extend(int(t) for t in piece)
            pos.extend(range(p, p + len(piece)))
            p += len(piece)
            prev_blank = prev_blank and not piece
    if not blanks:
        raise ValueError("the text has no blank to fill")
    if p > MAX_POSITIONS:
        raise ValueError(f"the layout needs {p} positions, more than the {MAX_POSITIONS} a "
                         f"session can hold")
    return ids, pos, blanks


def _parse(text: Any, blank: str) -> list[str | None]:
    """Known pieces (str) and blanks (None), in text order."""
    if isinstance(text, str):
        if not isinstance(blank, str) or not blank:
            raise ValueError("blank must be a non-empty str")
        check_text(text, "text")  # before the split: the index is the whole text's
        parts = text.split(blank)
        pieces: list[str | None] = []
        for i, part in enumerate(parts):
            if i:
                pieces.append(None)
            pieces.append(part)
    elif isinstance(text, (list, tuple)):
        pieces = list(text)
        for p in pieces:
            if p is not None and not isinstance(p, str):
                raise TypeError(f"segments must be str or None (a blank), got {type(p).__name__}")
    else:
        raise TypeError(f"text must be a str or a list of str/None, got {type(text).__name__}")
    for i, p in enumerate(pieces):
        if p is not None and not isinstance(text, str):
            check_text(p, f"segment {i}")
    if not any(p is None for p in pieces):
        raise ValueError(f"the text has no blank to fill (mark one with {blank!r}, or None in a "
                         f"list of segments)")
    return pieces


def _lengths(span_tokens: Any, n: int) -> list[int | None]:
    if span_tokens is None:
        return [None] * n
    if isinstance(span_tokens, (int, np.integer)) and not isinstance(span_tokens, bool):
        items: list[Any] = [span_tokens] * n
    elif isinstance(span_tokens, (list, tuple)):
        if len(span_tokens) != n:
            raise ValueError(f"span_tokens has {len(span_tokens)} entries for {n} blanks")
        items = list(span_tokens)
    else:
        raise TypeError("span_tokens must be None, an int or a list of int/None per blank")
    for v in items:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              or v < 1):
            raise ValueError(f"span lengths must be ints >= 1, got {v!r}")
    return [None if v is None else int(v) for v in items]


def _candidates(length_candidates: Any) -> list[int]:
    if isinstance(length_candidates, (str, bytes)) or not hasattr(length_candidates, "__iter__"):
        raise TypeError("length_candidates must be a sequence of ints")
    items = list(length_candidates)
    for c in items:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"length_candidates must be ints >= 1, got {c!r}")
    if not items:
        raise ValueError("length_candidates is empty")
    return sorted({int(c) for c in items})


def infill(model: Model, text: str | Sequence[str | None], blank: str = DEFAULT_BLANK,
           span_tokens: int | Sequence[int | None] | None = None,
           do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
           seed: int | None = None,
           length_candidates: Sequence[int] = LENGTH_CANDIDATES) -> InfillResult:
    """See :meth:`magnet.Model.infill`."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("infill needs a tokenizer; use magnet.infill.fill_layout with token ids")
    pieces = _parse(text, blank)
    n_blanks = sum(p is None for p in pieces)
    lengths = _lengths(span_tokens, n_blanks)
    cands = _candidates(length_candidates)
    sampling = Sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
    seed_ = resolve_seed(seed if do_sample else 0)
    eos = eos_id_of(model)
    start = tok.bos_id if tok.bos_id is not None else (eos if eos >= 0 else None)
    if start is None:
        raise ValueError("infill needs a BOS or EOS token to start the layout")
    # the text's first piece takes the prefix space (SentencePiece's "▁"); a piece after a
    # blank or after other text continues it (an empty piece before it is no text at all)
    first = next((i for i, p in enumerate(pieces) if p is None or p), len(pieces))
    encoded = [None if p is None else
               tok.encode(p, add_bos=False, prefix_space=i == first, add_eos=False)
               for i, p in enumerate(pieces)]
    encoded = [e for e in encoded if e is None or e]  # empty known pieces vanish
    # first token of the known text after each blank (EOS at the end; None before a blank)
    right: list[int | None] = []
    for i, e in enumerate(encoded):
        if e is None:
            nxt = encoded[i + 1] if i + 1 < len(encoded) else []
            right.append(None if nxt is None else (nxt[0] if nxt else (eos if eos >= 0 else None)))

    def layout(lens: Sequence[int]) -> list[list[int] | int]:
        it = iter(lens)
        return [[start]] + [next(it) if e is None else e for e in encoded]

    # lengths whose layout fits the model's positions
    limit = position_limit(model)
    fixed = 1 + sum(len(e) for e in encoded if e is not None) + sum(v or 0 for v in lengths)
    free = sum(v is None for v in lengths)
    if free:
        fitting = [c for c in cands if fixed + c * free <= limit]
        if not fitting:
            raise ValueError(
                f"the text needs {fixed + cands[0] * free} positions with blanks of "
                f"{cands[0]} token(s) (the shortest length candidate), more than the model's "
                f"{limit}")
        cands = fitting
    elif fixed > limit:
        raise ValueError(f"the text and its blanks need {fixed} positions, more than the model's "
                         f"{limit}")

    scores: list[dict[int, float]] = [{} for _ in range(n_blanks)]
    if free:
        rows = [layout([c if v is None else v for v in lengths]) for c in cands]
        trial = fill_layout(model, rows, sampling, seed_, [right] * len(rows))
        for j, v in enumerate(lengths):
            if v is not None:
                continue
            for r, c in enumerate(cands):
                lp = trial.right_logprob[r][j]
                scores[j][c] = float(np.mean(trial.logprobs[r][j])) + (lp or 0.0)
            lengths[j] = max(cands, key=lambda c, j=j: (scores[j][c], -c))
    final = [int(v) for v in lengths if v is not None]
    filled = fill_layout(model, [layout(final)], sampling, seed_)
    span_ids = filled.span_ids[0]
    # decode each span after the known tokens before it, and rebuild the text from the pieces
    spans: list[str] = []
    before: list[int] = [start]
    j = 0
    for e in encoded:
        if e is None:
            spans.append(continuation_text(tok, before, span_ids[j]))
            before = before + span_ids[j]
            j += 1
        else:
            before = before + e
    out_text, j = [], 0
    for p in pieces:
        if p is None:
            out_text.append(spans[j])
            j += 1
        else:
            out_text.append(p)
    return InfillResult("".join(out_text), spans, final, span_ids, scores)
