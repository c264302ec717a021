"""Sentence and token embeddings (docs/method.md, Inference): all-CONTEXT (bidirectional) passes.

Sentence level, per text::

    input = [BOS] + instruction tokens + text tokens + [EOS]      (all CONTEXT)

BOS whenever the tokenizer has one (the layout of SSCL training in magnet/adapt.py). The
instruction and the text are tokenized separately (so the instruction's tokens are exactly known).
``pooling="last"``: the final-layer state (after the final norm) at the appended EOS.
``pooling="mean"``: the mean of the final states of the text tokens and the EOS; BOS and
instruction tokens are excluded. Without an EOS token in the tokenizer nothing is appended and
"last" is the last text token.

Token level, per text::

    input = [BOS] + instruction tokens (none by default) + text tokens  (all CONTEXT, no EOS)

Token t's vector is the final state at t-1 (the MNTP convention: the state at i-1 predicts token
i), so the first text token's vector comes from BOS (or the instruction's last token); a
tokenizer without BOS uses its EOS as BOS.

``max_length`` counts every input token (BOS, instruction, text, EOS); ``truncate=True`` drops
text tokens from the end to fit, else a longer text raises ValueError. Default: the model's
``max_positions``, or its sliding window where that is shorter. Texts are batched by length
(sorted, then restored to input order); rows are right-padded with segment -1, which attends
nowhere and is excluded from pooling. The forward pass and the pooling run in C
(``magnet._C.embed``) with the GIL released.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from magnet import _C
from magnet.tokenizer import ENCODE_SLICE, check_text

if TYPE_CHECKING:
    from magnet.model import Model

DEFAULT_INSTRUCTION = "Given the sentence, find its representation: "
LEVELS = ("sentence", "token")
POOLINGS = {"last": 0, "mean": 1}


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()
"""Sentinel: the level's default instruction (sentence: DEFAULT_INSTRUCTION; token: none)."""


# eq and repr are written out: the generated ones compare the vectors with ==, whose array
# result has no truth value (== raised ValueError), and print every vector.
@dataclass(eq=False, repr=False)
class TokenEmbeddings:
    """Token-level vectors of one text.

    ``vectors``: float32 [T, D], row t for token t; ``ids``: the T token ids; ``tokens``: their
    strings (tokenizer pieces); ``offsets``: (start, end) character offsets of each token in the
    text. Two are equal when their ids, tokens, offsets and vectors (element by element) are.
    """

    vectors: np.ndarray
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]

    # it holds a mutable array: no hash, like a list
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenEmbeddings):
            return NotImplemented
        return (list(self.ids) == list(other.ids) and list(self.tokens) == list(other.tokens)
                # tuple(): offsets read back as lists (JSON) still equal the tuples
                and [tuple(o) for o in self.offsets] == [tuple(o) for o in other.offsets]
                and bool(np.array_equal(self.vectors, other.vectors)))

    def __repr__(self) -> str:
        vectors = np.asarray(self.vectors)
        shown = 5  # enough tokens to recognise the text
        tokens = repr(list(self.tokens[:shown]))
        if len(self.tokens) > shown:
            tokens = tokens[:-1] + ", ...]"
        return (f"TokenEmbeddings({len(self.ids)} tokens, vectors={vectors.dtype}"
                f"{list(vectors.shape)}, tokens={tokens})")


def _check_texts(texts: Any, allow_empty: bool = False) -> tuple[list[str], bool]:
    """(the texts as a list, whether one str was given). Besides a list or tuple, any sized,
    indexable collection is taken, as sentence-transformers takes it (a NumPy array, a pandas
    Series, a datasets column, a Sequence); not an iterator, which would be consumed, nor a
    mapping, whose iteration gives its keys."""
    single = isinstance(texts, str)
    if single:
        items: Any = [texts]
    elif isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise TypeError(f"texts must be a str or a 1-D array of str, got a {texts.ndim}-D "
                            "array")
        items = texts.tolist()
    elif isinstance(texts, (list, tuple)):
        items = texts
    elif (isinstance(texts, (bytes, bytearray, Mapping)) or not hasattr(texts, "__len__")
          or not hasattr(texts, "__getitem__")):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    else:
        items = list(texts)
    if not items and not allow_empty:
        raise ValueError("texts is an empty list")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts must be str, got {type(t).__name__} {t!r:.40} at index {i}")
        check_text(t, f"text {i}")
    return list(items), single


def _check_choice(value: Any, choices: Any, name: str) -> None:
    """ValueError unless ``value`` is one of ``choices`` (str, or None where listed); a list or
    an array is refused with the same message, not an unhashable/ambiguous-truth error."""
    if not (value is None or isinstance(value, str)) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _check_max_length(max_length: Any) -> None:
    if max_length is not None and (isinstance(max_length, bool)
                                   or not isinstance(max_length, (int, np.integer))):
        raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")


def _check_instruction(instruction: Any, name: str) -> None:
    """``instruction`` (``name``: the caller's parameter) is None or valid Unicode text."""
    if instruction is None:
        return
    if not isinstance(instruction, str):
        raise TypeError(f"{name} must be a str or None, got {type(instruction).__name__}")
    check_text(instruction, name)


def _progress(batches: list[np.ndarray], show: bool | None, desc: str) -> Iterator[np.ndarray]:
    if not show:
        return iter(batches)
    from tqdm.auto import tqdm

    return iter(tqdm(batches, desc=desc))


def embed(model: Model, texts: str | Sequence[str], level: str = "sentence",
          pooling: str = "last", instruction: str | None = DEFAULT, batch_size: int = 32,
          normalize: bool = False, max_length: int | None = None, truncate: bool = True,
          show_progress_bar: bool | None = None) -> np.ndarray | TokenEmbeddings | list[Any]:
    """See :meth:`magnet.Model.embed`."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("embed needs a tokenizer")
    items, single = _check_texts(texts)
    _check_choice(level, LEVELS, "level")
    _check_choice(pooling, POOLINGS, "pooling")
    _check_batch_size(batch_size)
    instruction = _instruction_at(instruction, level)
    _check_instruction(instruction, "instruction")
    _check_max_length(max_length)
    head, suffix, room, max_length = _layout(model, level, instruction, max_length)
    # tokenized a chunk at a time and kept as int32 arrays: the tokenizers library's Encoding
    # objects cost some 5 KB per text, too much to hold for a whole corpus at once
    head_ids = np.array(head, np.int32)
    suffix_ids = np.array(suffix, np.int32)
    seqs: list[np.ndarray] = []
    pieces: list[tuple[list[str], list[tuple[int, int]]]] = []  # token level: tokens, offsets
    for c0 in range(0, len(items), ENCODE_SLICE):
        encs = tok.backend.encode_batch(items[c0:c0 + ENCODE_SLICE], add_special_tokens=False)
        for j, e in enumerate(encs):
            i = c0 + j
            n = len(e.ids)
            if n > room and not truncate:
                raise ValueError(f"text {i} has {n + len(head) + len(suffix)} tokens, more "
                                 f"than max_length={max_length} (pass truncate=True to cut it)")
            n = min(n, room)
            seq = np.concatenate((head_ids, np.array(e.ids[:n], np.int32), suffix_ids))
            if seq.size == 0:  # sentence level only: token level always starts from BOS/EOS
                raise ValueError(f"text {i} has no tokens, and there is no BOS, EOS or "
                                 "instruction token to embed it by: it cannot be embedded (pass "
                                 "an instruction or drop empty texts)")
            seqs.append(seq)
            if level == "token":
                pieces.append((tok.token_strings(e.tokens[:n]), [tuple(o) for o in e.offsets[:n]]))
        del encs
    if level == "sentence":
        # pooling range [start, end): text tokens + EOS; "last" uses end - 1; an empty text
        # without EOS pools the last input token
        lengths = np.array([len(q) for q in seqs], np.int32)
        starts = np.where(lengths == len(head), len(head) - 1, len(head)).astype(np.int32)
        out = np.empty((len(seqs), model.config.hidden_size), np.float32)
        for idx, ids, seg in _batches(seqs, batch_size, show_progress_bar, "embed"):
            out[idx] = _C.embed(model._c, ids, seg, starts[idx], lengths[idx],
                                POOLINGS[pooling], bool(normalize))
        return out[0] if single else out
    results: list[Any] = [None] * len(seqs)
    for idx, ids, seg in _batches(seqs, batch_size, show_progress_bar, "embed tokens"):
        hidden, _ = model._c.forward(ids, np.zeros(ids.shape, np.uint8), seg, True, False)
        for r, i in enumerate(idx):
            n = len(seqs[i]) - len(head)
            vec = np.array(hidden[r, len(head) - 1:len(head) - 1 + n])
            if normalize:
                _normalize_rows(vec)
            tokens, offsets = pieces[i]
            results[i] = TokenEmbeddings(vec, seqs[i][len(head):].tolist(), tokens, offsets)
    return results[0] if single else results


def _instruction_at(instruction: str | None, level: str) -> str | None:
    """The instruction a level uses: DEFAULT is DEFAULT_INSTRUCTION for sentences, none for
    tokens."""
    if instruction is not DEFAULT:
        return instruction
    return DEFAULT_INSTRUCTION if level == "sentence" else None


def _layout(model: Model, level: str, instruction: str | None, max_length: int | None
            ) -> tuple[list[int], list[int], int, int]:
    """(ids before the text, ids after it, the most text tokens, max_length) of one input.

    ``max_length`` defaults to the positions the model may use: its position table, or its
    sliding window where that is shorter (a longer input is refused there, not truncated)."""
    tok = model.tokenizer
    assert tok is not None
    if max_length is None:
        cfg = model.config
        max_length = cfg.max_positions if cfg.max_positions > 0 else 1 << 30
        if cfg.sliding_window:
            max_length = min(max_length, cfg.sliding_window)
    eos = tok.eos_id
    if level == "sentence":
        prefix = [tok.bos_id] if tok.bos_id is not None else []  # as SSCL training does
        suffix = [eos] if eos is not None else []
    else:
        first = tok.bos_id if tok.bos_id is not None else eos
        if first is None:
            raise ValueError("token embeddings need a BOS or EOS token to start from")
        prefix, suffix = [first], []
    head = prefix + (tok.encode(instruction, add_bos=False, add_eos=False) if instruction else [])
    room = int(max_length) - len(head) - len(suffix)
    if room < 0 or (room == 0 and not suffix):
        raise ValueError(f"max_length={max_length} leaves no room for text after the "
                         f"{len(head)} BOS/instruction tokens")
    return head, suffix, room, int(max_length)


def _normalize_rows(x: np.ndarray) -> None:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # zero rows stay zero; not np.divide(where=): NumPy 2.4 segfaults when that one runs out of
    # memory (it raises MemoryError without holding the GIL)
    x /= np.where(norms > 0, norms, norms.dtype.type(1))


def _batches(seqs: list[np.ndarray], batch_size: int, show: bool | None, desc: str
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(indices, ids int32 [b, T], segments int32 [b, T]) per batch of similar lengths."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in _progress(chunks, show, desc):
        T = max(len(seqs[i]) for i in idx)
        ids = np.zeros((len(idx), T), np.int32)
        seg = np.full((len(idx), T), -1, np.int32)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = seqs[i]
            seg[r, :len(seqs[i])] = 0
        yield idx, ids, seg


OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
IGNORED_ENCODE_KWARGS = frozenset({"prompt_name", "prompt_type", "task_name", "task", "device",
                                   "pool", "chunk_size", "processing_kwargs"})
"""Keyword arguments that sentence-transformers/MTEB callers pass and ``encode`` ignores without
a warning: magnet has no named prompts, runs on the CPU in one process, and the results do not
depend on them. Any other unknown keyword argument is ignored with a UserWarning."""

_log = logging.getLogger(__name__)


def _int8_ranges(emb: np.ndarray, precision: str) -> np.ndarray:
    """Per-dimension [min; max] from the embeddings themselves (sentence-transformers 6.2's
    ``_get_quantization_ranges`` without calibration embeddings)."""
    if emb.ndim == 1 or emb.shape[0] == 1:
        raise ValueError(f"Cannot compute {precision} quantization ranges from a single embedding; "
                         "encode several texts at once, or encode in float32 and quantize with "
                         "ranges from a representative set of embeddings")
    if emb.shape[0] < 100:
        _log.warning("Computing %s quantization buckets based on %d embeddings. %s quantization "
                     "is more stable with ranges calculated from more embeddings.",
                     precision, len(emb), precision)
    return np.vstack((np.min(emb, axis=0), np.max(emb, axis=0)))


def quantize(emb: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., D] -> ``precision``, exactly as sentence-transformers 6.2's
    ``quantize_embeddings`` without calibration: "int8"/"uint8" cut each dimension's [min, max]
    (over ``emb``'s rows unless ``ranges`` is given) into 256 buckets; "binary"/"ubinary" pack the
    signs (> 0) into D/8 bytes, int8 (offset by -128) or uint8."""
    if emb.ndim == 2 and emb.shape[0] == 0:
        dim = emb.shape[1]
        if precision.endswith("int8"):
            return np.zeros((0, dim), np.int8 if precision == "int8" else np.uint8)
        if precision.endswith("binary"):
            return np.zeros((0, (dim + 7) // 8), np.int8 if precision == "binary" else np.uint8)
    if precision == "float32":
        return emb.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = _int8_ranges(emb, precision)
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((emb - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    if precision == "binary":
        return (np.packbits(emb > 0, axis=-1) - 128).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(emb > 0, axis=-1)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError("convert_to_tensor=True needs PyTorch, which is not installed; "
                          "install torch or leave convert_to_tensor=False for numpy arrays") from e
    return torch


def encode(model: Model, sentences: str | Sequence[str] | None = None, batch_size: int = 32,
           show_progress_bar: bool | None = None,
           output_value: str | None = "sentence_embedding", convert_to_numpy: bool = True,
           normalize_embeddings: bool = False, *, prompt: str | None = None,
           precision: str | None = "float32", convert_to_tensor: bool = False,
           truncate_dim: int | None = None, pooling: str = "last", max_length: int | None = None,
           **kwargs: Any) -> Any:
    """See :meth:`magnet.Model.encode`. ``inputs=`` (sentence-transformers 6's name for the
    texts) may stand for ``sentences``."""
    if "inputs" in kwargs:
        if sentences is not None:
            raise TypeError("encode() got both sentences and inputs: pass the texts once "
                            "(inputs is sentence-transformers' newer name for sentences)")
        sentences = kwargs.pop("inputs")
    elif sentences is None:
        raise TypeError("encode() got no texts: pass them as the first argument (sentences) or "
                        "as inputs=")
    _check_choice(output_value, OUTPUT_VALUES, "output_value")
    if precision is None:
        precision = "float32"  # as sentence-transformers: no quantization
    _check_choice(precision, PRECISIONS, "precision")
    if precision != "float32" and output_value is None:
        raise ValueError(f"precision={precision!r} needs output_value='sentence_embedding' or "
                         "'token_embeddings', not None")
    D = model.config.hidden_size
    if truncate_dim is not None:
        if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer)):
            raise TypeError("truncate_dim must be an int or None, got "
                            f"{type(truncate_dim).__name__}")
        if not 1 <= truncate_dim <= D:
            raise ValueError(f"truncate_dim must be in [1, {D}] (the model's hidden size), "
                             f"got {truncate_dim}")
        truncate_dim = int(truncate_dim)
    unknown = sorted(set(kwargs) - IGNORED_ENCODE_KWARGS)
    if unknown:
        warnings.warn(f"encode ignores the keyword arguments {unknown}", UserWarning, stacklevel=3)
    torch = _torch() if convert_to_tensor else None
    items, single = _check_texts(sentences, allow_empty=True)
    # checked here, not only by embed: an empty list is not embedded, and the message names
    # encode's parameter (prompt)
    _check_choice(pooling, POOLINGS, "pooling")
    _check_batch_size(batch_size)
    _check_max_length(max_length)
    _check_instruction(prompt, "prompt")
    instruction = DEFAULT if prompt is None else prompt

    sent = tok = None
    if output_value != "token_embeddings":
        if items:
            sent = embed(model, items, level="sentence", pooling=pooling, instruction=instruction,
                         batch_size=batch_size, max_length=max_length,
                         show_progress_bar=show_progress_bar)
        else:
            sent = np.zeros((0, D), np.float32)
        sent = sent[:, :truncate_dim]  # before normalization, as sentence-transformers
        if normalize_embeddings and output_value == "sentence_embedding":
            sent = np.ascontiguousarray(sent)
            _normalize_rows(sent)
    if output_value != "sentence_embedding":  # token vectors are never normalized or truncated
        token_length = max_length
        if output_value is None and items:
            # the same text tokens as the sentence embeddings beside them: those lose room to
            # the instruction and EOS, the token level (BOS first) does not
            room = _layout(model, "sentence", _instruction_at(instruction, "sentence"),
                           max_length)[2]
            token_length = room + len(_layout(model, "token", _instruction_at(instruction, "token"),
                                              1 << 30)[0])
        tok = embed(model, items, level="token", instruction=instruction, batch_size=batch_size,
                    max_length=token_length, show_progress_bar=show_progress_bar) if items else []

    def out(x: np.ndarray) -> Any:
        return torch.from_numpy(x) if torch is not None else x

    result: Any
    if output_value == "sentence_embedding":
        sent = quantize(np.ascontiguousarray(sent), precision)
        if torch is not None:
            result = out(sent)
        elif convert_to_numpy:
            result = sent
        else:
            result = list(sent)
    elif output_value == "token_embeddings":
        vecs = [t.vectors for t in tok]
        if precision != "float32" and vecs:
            ranges = None
            if precision.endswith("int8"):  # one set of buckets for all texts' tokens
                allv = np.concatenate(vecs, axis=0)
                ranges = _int8_ranges(allv, precision) if len(allv) else None
            vecs = [quantize(v, precision, ranges) for v in vecs]
        result = [out(v) for v in vecs]
    else:
        result = [{"input_ids": out(np.array(t.ids, np.int64)),
                   "attention_mask": out(np.ones(len(t.ids), np.int64)),
                   "token_embeddings": out(t.vectors),
                   "sentence_embedding": out(np.array(s))} for t, s in zip(tok, sent, strict=True)]
    return result[0] if single else result
