"""Left-to-right generation (all-SPAN, the ordinary causal decoder) over a KV cache.

The C ``Generator`` holds the key/value cache, the next-token logits and the sampler state;
one ``decode_step()`` call appends the previous step's tokens and samples the next token of
every row (Hugging Face's logits processors: repetition penalty, temperature, top-k, top-p,
min-p; greedy when ``do_sample=False``). Python only orchestrates: it builds the prompt arrays,
decodes text and checks stop strings.

Batches: prompts of different lengths are left-padded (segment -1) so every row ends at the
same cache index; each row's positions start at 0 at its first token. Sampling draws use a
counter-based RNG of (seed, step, row), so the same seed gives the same output, and a prompt's
output depends on its row index within the batch when sampling.
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from magnet import _C

# At run time, not for type checkers only, so that typing.get_type_hints resolves `Model`:
# magnet.model imports this module lazily (inside its methods), so there is no cycle.
from magnet.model import Model
from magnet.tokenizer import Tokenizer, check_text

SPAN = 1
# Prompt tokens kept in front of new tokens when decoding them, so a tokenizer that strips the
# first token's leading space (SentencePiece) strips it from the anchor, not from the new text.
_ANCHOR = 4
# Tokens a row re-decodes per new token, at most about twice this: the text of those before is
# kept (see _Row.add), so decoding costs O(1) per token instead of O(length)
_TEXT_WINDOW = 64
# Positions and session lengths are int32 in the C core.
MAX_POSITIONS = 2**31 - 1


@dataclass(frozen=True)
class Sampling:
    """Validated sampling settings (the argument names of Hugging Face ``generate``)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample must be a bool, got {self.do_sample!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or v != v:
                raise TypeError(f"{name} must be a number, got {v!r}")
        if isinstance(self.top_k, (bool, np.bool_)) or not isinstance(self.top_k, numbers.Integral):
            raise TypeError(f"top_k must be an int, got {self.top_k!r}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when do_sample=True, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must lie in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def c_kwargs(self) -> dict[str, Any]:
        # a top_k beyond the vocabulary filters nothing (as transformers): clamp it to an int32
        return dict(do_sample=bool(self.do_sample),
                    temperature=float(self.temperature) if self.do_sample else 1.0,
                    top_k=min(int(self.top_k), MAX_POSITIONS), top_p=float(self.top_p),
                    min_p=float(self.min_p), repetition_penalty=float(self.repetition_penalty))


def resolve_seed(seed: int | None) -> int:
    """A 64-bit seed: ``seed`` itself, or a random one when None."""
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return int(seed) % (1 << 64)


def eos_id_of(model: Model) -> int:
    """The model's end-of-sequence id (tokenizer first, then config), or -1."""
    tok = model.tokenizer
    if tok is not None and tok.eos_id is not None:
        return int(tok.eos_id)
    return -1 if model.config.eos_token_id is None else int(model.config.eos_token_id)


def eos_ids_of(model: Model) -> tuple[int, ...]:
    """Every id that ends generation: the tokenizer's EOS and the config's list (Llama 3
    Instruct lists three, as transformers' generate reads them)."""
    first = eos_id_of(model)
    ids = ((first,) if first >= 0 else ()) + tuple(model.config.eos_token_ids)
    return tuple(dict.fromkeys(ids))


def special_tokens(tokenizer: Tokenizer) -> dict[int, str]:
    """Text of each special token (those that decoding leaves out), by id."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "get_added_tokens_decoder"):
        return {}
    return {int(i): t.content for i, t in backend.get_added_tokens_decoder().items() if t.special}


def continuation_text(tokenizer: Tokenizer, before: Sequence[int], ids: Sequence[int]) -> str:
    """Text of ``ids`` as it reads after the tokens ``before`` (only the last few are used)."""
    anchor = [int(i) for i in before[-_ANCHOR:]]
    head = tokenizer.decode(anchor)
    full = tokenizer.decode([*anchor, *ids])
    return full[len(head):] if full.startswith(head) else tokenizer.decode(ids)


def _check_max_new_tokens(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"max_new_tokens must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {n}")
    return int(n)


def _check_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)):
        raise TypeError("stop must be a str, a list of str or None")
    for s in items:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty str, got {s!r}")
    return list(items)


def position_limit(model: Model) -> int:
    """Positions a sequence may use: GPT-2's learned table, a sliding window (which magnet does
    not implement, so longer sequences are refused), else what a session can hold."""
    return _position_bound(model)[0]


def _position_bound(model: Model) -> tuple[int, str]:
    """:func:`position_limit` and what sets it, for messages."""
    cfg = model.config
    bound = (MAX_POSITIONS, "the most a session can hold")
    if cfg.arch == "gpt2" and 0 < cfg.max_positions < bound[0]:
        bound = (cfg.max_positions, "GPT-2's learned position table")
    if cfg.sliding_window and cfg.sliding_window < bound[0]:
        bound = (cfg.sliding_window, "its sliding window, which magnet does not implement")
    return bound


def decode_steps(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: Sampling, seed: int, eos_id: int | Sequence[int]
                 ) -> Iterator[tuple[Any, np.ndarray]]:
    """Yields ``(generator, tokens)`` once per new token: tokens int32 [B], -1 for finished rows.

    The caller may ``generator.finish(row)`` between steps (stop strings). A row ends when it
    samples ``eos_id`` (or one of a sequence of them; the EOS token is yielded) or is finished;
    the loop ends when every row has ended or after ``max_new_tokens`` steps. A row also ends
    when it reaches the model's position limit (GPT-2's table, a sliding window), as
    transformers' ``max_length``: each row at its own length, so a long prompt beside it does
    not shorten it. Checked here, before the first step (a stream fails when it is made, not
    halfway): a prompt longer than that limit, a session that cannot exist.
    """
    T = max(len(p) for p in prompts)
    limit, why = _position_bound(model)
    if T > limit:
        raise ValueError(f"the prompt has {T} tokens, more than the model's {limit} positions "
                         f"({why})")
    # a row stops at `limit` tokens, prompt included (its last token at position limit - 1)
    budgets = [min(max_new_tokens, limit - len(p)) for p in prompts]
    # the KV cache of such a session cannot exist (a model's own limit cuts the session first)
    steps = max(budgets) if limit < MAX_POSITIONS else max_new_tokens
    if T + steps - 1 >= 2**31:
        raise MemoryError(f"cannot hold a KV cache of {T + steps - 1} positions "
                          f"(max_new_tokens={max_new_tokens})")
    return _decode_loop(model, prompts, budgets, sampling, seed, eos_id)


def _decode_loop(model: Model, prompts: Sequence[Sequence[int]], budgets: list[int],
                 sampling: Sampling, seed: int, eos_id: int | Sequence[int]
                 ) -> Iterator[tuple[Any, np.ndarray]]:
    """The steps of :func:`decode_steps`, after its checks; row b makes at most budgets[b]
    new tokens."""
    B = len(prompts)
    T = max(len(p) for p in prompts)
    steps = max(budgets)
    ids = np.zeros((B, T), np.int32)
    seg = np.full((B, T), -1, np.int32)
    pos = np.zeros((B, T), np.int32)
    for b, p in enumerate(prompts):
        n = len(p)
        ids[b, T - n:] = p
        seg[b, T - n:] = 0
        pos[b, T - n:] = np.arange(n, dtype=np.int32)
    if steps == 0:
        return
    gen = _C.Generator(model._c, B, T + steps - 1, seed=seed, eos_id=eos_id,
                       **sampling.c_kwargs())
    gen.append(ids, np.full((B, T), SPAN, np.uint8), seg, pos)
    # the rows that reach their last position after each step (0: a prompt that fills the
    # positions, nothing follows it), found once rather than per token
    ends: dict[int, list[int]] = {}
    for b, budget in enumerate(budgets):
        ends.setdefault(budget, []).append(b)
    for b in ends.get(0, ()):
        gen.finish(b)
    for step in range(steps):
        tokens, _ = gen.decode_step()
        if (tokens < 0).all():
            return
        yield gen, tokens
        for b in ends.get(step + 1, ()):  # its next token would pass the limit
            gen.finish(b)
        if gen.finished.all():
            return


def generate_ids(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                 sampling: Sampling | None = None, seed: int | None = None,
                 eos_id: int | Sequence[int] | None = None) -> list[list[int]]:
    """Token-level generation: new token ids per prompt (EOS included when sampled).

    ``prompts``: non-empty token-id lists (a batch; lengths may differ). ``eos_id`` (an id or a
    sequence of ids) defaults to the model's (``-1``: none).
    """
    prompts = _check_id_prompts(model, prompts)
    max_new_tokens = _check_max_new_tokens(max_new_tokens)
    eos = eos_ids_of(model) if eos_id is None else eos_id
    out: list[list[int]] = [[] for _ in prompts]
    for _, tokens in decode_steps(model, prompts, max_new_tokens, sampling or Sampling(),
                                  resolve_seed(seed if sampling and sampling.do_sample else 0),
                                  eos):
        for b, t in enumerate(tokens.tolist()):
            if t >= 0:
                out[b].append(t)
    return out


def _check_id_prompts(model: Model, prompts: Any) -> list[list[int]]:
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    out = []
    for p in prompts:
        arr = np.asarray(p)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError("each prompt must be a non-empty 1-D list of token ids")
        if arr.min() < 0 or arr.max() >= model.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {model.config.vocab_size})")
        out.append(arr.astype(np.int64).tolist())
    return out


class _Row:
    """Decoded text of one row so far, cut at the first stop string.

    ``text`` leaves special tokens out (``skip_special_tokens``); stop strings are matched on the
    raw text, which has each special token's own text where it was generated, so a stop string
    may name a special token (as transformers' ``stop_strings``).
    """

    def __init__(self, tokenizer: Tokenizer, prompt: list[int], stops: list[str],
                 specials: dict[int, str] | None = None) -> None:
        self.tokenizer, self.prompt, self.stops = tokenizer, prompt, stops
        self.specials = specials or {}
        self.ids: list[int] = []
        self.text = ""
        self.marks: list[tuple[int, str]] = []  # (offset in text, raw text) per special token
        self.stopped = False
        # length of `text` before the trailing run of byte-fallback tokens (None: no such run).
        # Decoding turns a run into text as one group: bytes that are valid UTF-8 alone become
        # U+FFFD with the rest of the run when it turns out invalid, so that text is not final
        self.run_start: int | None = None
        # text of ids[:fixed] as it reads after the prompt, final: a new token re-decodes only
        # ids[fixed:] (decoding everything each time made a long generation quadratic)
        self.fixed = 0
        self.fixed_text = ""

    def add(self, token: int, eos_ids: tuple[int, ...]) -> None:
        if token in eos_ids:
            return
        self.ids.append(token)
        if token in self.specials:  # decoding skips it: the text is unchanged
            # (the bytes on either side of it still decode as one run)
            self.marks.append((len(self.text), self.specials[token]))
        else:
            if token not in self.tokenizer.byte_ids:
                self.run_start = None
            elif self.run_start is None:
                self.run_start = len(self.text)
            self.text = self.fixed_text + continuation_text(
                self.tokenizer, self._before(self.fixed), self.ids[self.fixed:])
            self._advance()
        # an open byte run's text is not final (a later byte may turn it into U+FFFD): a stop
        # string is looked for in it only once the run ends, or when the row does (finish)
        self._cut_at_stop(len(self.text) if self.run_start is None else self.run_start)

    def _before(self, k: int) -> list[int]:
        """The tokens before ids[k] that continuation_text reads (the last _ANCHOR)."""
        near = self.ids[max(0, k - _ANCHOR):k]
        return near if len(near) == _ANCHOR else [*self.prompt[-_ANCHOR:], *near]

    def _advance(self) -> None:
        """Moves ``fixed`` to _TEXT_WINDOW tokens before the end, once that many more have come,
        where the text splits there: no byte run or special token at the boundary, and the two
        parts decoded apart give exactly ``text`` (else it tries again at the next token)."""
        k = len(self.ids) - _TEXT_WINDOW
        if k - self.fixed < _TEXT_WINDOW or self.run_start is not None:
            return
        plain = self.tokenizer.byte_ids
        if any(t in plain or t in self.specials for t in self.ids[k - 1:k + 1]):
            return
        piece = continuation_text(self.tokenizer, self._before(self.fixed), self.ids[self.fixed:k])
        rest = continuation_text(self.tokenizer, self._before(k), self.ids[k:])
        if piece.endswith("\ufffd") or self.fixed_text + piece + rest != self.text:
            return
        self.fixed, self.fixed_text = k, self.fixed_text + piece

    def finish(self) -> None:
        """The row has ended (EOS, max_new_tokens, the position limit): its text is final, so
        a stop string inside a trailing byte run now counts."""
        self.run_start = None
        if not self.stopped:
            self._cut_at_stop(len(self.text))

    def _cut_at_stop(self, n: int) -> None:
        """Cuts ``text`` before the first stop string that lies within ``text[:n]``."""
        if not self.stops:
            return
        raw = self._raw(n)
        cut = min((i for i in (raw.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:self._text_index(cut)], True

    def _raw(self, n: int) -> str:
        """The raw text of ``text[:n]`` and of the special tokens generated up to there."""
        if not self.marks:
            return self.text[:n]
        parts, at = [], 0
        for offset, raw in self.marks:
            offset = max(at, min(offset, len(self.text)))
            if offset > n:
                break
            parts += [self.text[at:offset], raw]
            at = offset
        parts.append(self.text[at:n])
        return "".join(parts)

    def _text_index(self, r: int) -> int:
        """Index in ``text`` of raw index ``r`` (a special token's start, when inside one)."""
        shift = at = 0
        for offset, raw in self.marks:
            offset = max(at, min(offset, len(self.text)))
            if r < offset + shift:
                break
            if r < offset + shift + len(raw):
                return offset
            shift += len(raw)
            at = offset
        return r - shift

    def safe_length(self) -> int:
        """Length of the text that no later token can change: incomplete UTF-8 (shown as
        U+FFFD), the text of a trailing run of byte-fallback tokens (decoded as one group) and a
        tail that could begin a stop string are held back."""
        text = self.text
        n = len(text) if self.run_start is None else min(len(text), self.run_start)
        while n > 0 and text[n - 1] == "\ufffd":
            n -= 1
        raw = self._raw(n)
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(raw)), hold, -1):
                if raw.endswith(s[:k]):
                    hold = k
                    break
        return min(n, self._text_index(len(raw) - hold)) if hold else n


def generate(model: Model, prompt: str | Sequence[str], max_new_tokens: int = 64,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             stop: str | Sequence[str] | None = None, seed: int | None = None,
             stream: bool = False) -> str | list[str] | Iterator[str]:
    """See :meth:`magnet.Model.generate`."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("this model has no tokenizer; use magnet.generation.generate_ids")
    single = isinstance(prompt, str)
    prompts = [prompt] if single else prompt
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
    if not prompts:
        raise ValueError("prompt is an empty list")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be str, got {type(p).__name__}")
        check_text(p, "prompt")
    if stream and not single:
        raise ValueError("stream=True takes a single prompt (a str), not a list")
    max_new_tokens = _check_max_new_tokens(max_new_tokens)
    sampling = Sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
    stops = _check_stop(stop)
    eos = eos_ids_of(model)
    start = tokenizer.bos_id if tokenizer.bos_id is not None else (eos[0] if eos else None)
    ids = tokenizer.encode_batch(list(prompts))
    for i, p in enumerate(ids):
        if not p:  # an empty prompt starts from BOS (or EOS, GPT-2's document separator)
            if start is None:
                raise ValueError("empty prompt and the tokenizer has no BOS or EOS to start from")
            ids[i] = [start]
    specials = special_tokens(tokenizer) if stops else {}
    rows = [_Row(tokenizer, p, stops, specials) for p in ids]
    steps = decode_steps(model, ids, max_new_tokens, sampling,
                         resolve_seed(seed if do_sample else 0), eos)
    if stream:
        return _stream(rows[0], steps, eos)
    for gen, tokens in steps:
        for b, t in enumerate(tokens.tolist()):
            if t >= 0 and not rows[b].stopped:
                rows[b].add(t, eos)
                if rows[b].stopped:
                    gen.finish(b)
    for r in rows:
        r.finish()
    texts = [r.text for r in rows]
    return texts[0] if single else texts


def _stream(row: _Row, steps: Iterator[tuple[Any, np.ndarray]], eos: tuple[int, ...]
            ) -> Iterator[str]:
    """Text pieces of one row; their concatenation equals the non-streaming result."""
    sent = 0
    for gen, tokens in steps:
        row.add(int(tokens[0]), eos)
        if row.stopped:
            gen.finish(0)
            break
        safe = row.safe_length()
        if safe > sent:
            yield row.text[sent:safe]
            sent = safe
    row.finish()  # (a stop found now lies past `sent`: safe_length held the open run back)
    if len(row.text) > sent:
        yield row.text[sent:]
