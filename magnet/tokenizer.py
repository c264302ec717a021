"""Text <-> token ids, through the `tokenizers` library whatever the checkpoint format."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tokenizers


def check_text(text: str, what: str) -> str:
    """``text`` itself; ValueError when it is not valid Unicode (a lone surrogate, which UTF-8
    and so the tokenizer cannot encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} contains a lone surrogate {text[e.start]!r} at index {e.start}, "
                         f"which is not valid Unicode text") from None
    return text


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the model's special ids.

    ``encode(text) -> list[int]`` and ``decode(ids) -> str``. Formats build one from their own
    description (``tokenizer.json``, GGUF metadata, a llama2.c vocabulary).
    ``add_bos_default`` / ``add_eos_default``: whether the checkpoint's own tokenizer puts BOS
    in front of a text and EOS after it (transformers' ``add_special_tokens=True``); they are
    what ``encode(text, add_bos=None, add_eos=None)``, the default, does, and ``add_bos`` /
    ``add_eos`` True or False override them.
    ``encode(text, prefix_space=False)`` tokenizes text that continues other text: without the
    space a SentencePiece-style tokenizer puts in front of a text ("▁").
    ``pad_id`` / ``unk_id``: the checkpoint's padding and unknown tokens (None when it names
    none), kept so a saved tokenizer names them as the source did (transformers pads with it).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_id: int | None,
        eos_id: int | None,
        add_bos_default: bool = True,
        chat_template: str | None = None,
        add_eos_default: bool = False,
        pad_id: int | None = None,
        unk_id: int | None = None,
    ) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.unk_id = unk_id
        self.add_bos_default = add_bos_default
        self.add_eos_default = add_eos_default
        self.chat_template = chat_template  # the Jinja template the checkpoint ships, if any
        self._continuing: tokenizers.Tokenizer | None = None
        self._byte_ids: frozenset[int] | None = None
        self._stand_in: str | None = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None, prefix_space: bool = True,
               add_eos: bool | None = None) -> list[int]:
        """Token ids of ``text``; a BOS id first when ``add_bos`` and an EOS id last when
        ``add_eos`` (defaults: what the checkpoint's tokenizer does).

        ``prefix_space=False``: no space is added in front of the text (SentencePiece's dummy
        prefix: a ``Prepend("▁")`` normalizer, a ``Metaspace`` or ``ByteLevel`` pre-tokenizer
        that adds one), for a piece that continues earlier text; tokenizers that add none
        (GPT-2's byte-level BPE) are unaffected.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        backend = self.backend if prefix_space else self._continuing_backend()
        prefix, suffix = self._specials(add_bos, add_eos)
        try:
            ids = backend.encode(text, add_special_tokens=False).ids
        except TypeError:  # a lone surrogate (not UTF-8): say so, not "must be str"
            check_text(text, "text")
            raise
        return prefix + ids + suffix

    def encode_batch(self, texts: Iterable[str], add_bos: bool | None = None,
                     add_eos: bool | None = None) -> list[list[int]]:
        """``encode`` over many texts (a list, or any iterable of str, read once), in parallel
        inside the tokenizers library. A bare str is refused (TypeError): pass ``[text]``."""
        if isinstance(texts, (str, bytes, bytearray)):
            raise TypeError(f"texts must be a list of str, got a {type(texts).__name__}: pass a "
                            "list ([text]) to encode one text as a batch, or use encode(text)")
        try:
            items = list(texts)
        except TypeError:
            raise TypeError(f"texts must be a list of str, got {type(texts).__name__}") from None
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, got {type(t).__name__} (text {i})")
        return list(self.encode_iter(items, add_bos, add_eos))

    def encode_iter(self, items: list[str], add_bos: bool | None = None,
                    add_eos: bool | None = None) -> Iterator[list[int]]:
        """The ids of each of ``items`` (a list of str, checked by the caller), tokenized
        ENCODE_SLICE texts at a time: a tokenizers Encoding costs kilobytes (offsets, strings,
        masks), so a whole corpus at once peaked at about 130 times the text's size (adapt on
        a file), and a caller that keeps less than the ids holds one slice's lists at most."""
        prefix, suffix = self._specials(add_bos, add_eos)
        for c0 in range(0, len(items), ENCODE_SLICE):
            part = items[c0:c0 + ENCODE_SLICE]
            try:
                encs = self.backend.encode_batch(part, add_special_tokens=False)
            except TypeError:  # a lone surrogate (not UTF-8): name the text
                for i, t in enumerate(part):
                    check_text(t, f"text {c0 + i}")
                raise
            for e in encs:
                yield prefix + e.ids + suffix

    def _specials(self, add_bos: bool | None, add_eos: bool | None
                  ) -> tuple[list[int], list[int]]:
        """The ids that go before and after a text's own (None: the checkpoint's habit)."""
        bos = self.add_bos_default if add_bos is None else add_bos
        eos = self.add_eos_default if add_eos is None else add_eos
        return ([self.bos_id] if bos and self.bos_id is not None else [],
                [self.eos_id] if eos and self.eos_id is not None else [])

    def _continuing_backend(self) -> tokenizers.Tokenizer:
        """The backend with its prefix space switched off (itself when it adds none)."""
        if self._continuing is None:
            spec = json.loads(self.backend.to_str())
            changed = False
            if spec.get("normalizer") is not None:
                spec["normalizer"], n = _without_prepend(spec["normalizer"])
                changed |= n
            if spec.get("pre_tokenizer") is not None:
                changed |= _no_prefix_space(spec["pre_tokenizer"])
            if changed:
                backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
                backend.encode_special_tokens = self.backend.encode_special_tokens
            else:
                backend = self.backend
            self._continuing = backend
        return self._continuing

    @property
    def byte_ids(self) -> frozenset[int]:
        """Ids of the byte-fallback pieces ``<0x00>`` .. ``<0xFF>`` (none in a byte-level BPE).
        Decoding turns a run of them into text as one group, so the text of a run's first bytes
        may change when later bytes of the run arrive."""
        if self._byte_ids is None:
            self._byte_ids = frozenset(
                i for name, i in self.backend.get_vocab(with_added_tokens=False).items()
                if len(name) == 6 and name.startswith("<0x") and name.endswith(">"))
        return self._byte_ids

    def token_strings(self, pieces: Sequence[str]) -> list[str]:
        """Vocabulary pieces as users know them: SentencePiece's ``▁`` for the word boundary.

        A llama2.c vocabulary is held with another character for a space (a typed ``▁`` is an
        ordinary character there), which this shows as ``▁``."""
        if self._stand_in is None:
            self._stand_in = _space_stand_in(json.loads(self.backend.to_str()).get("normalizer"))
        if not self._stand_in:
            return list(pieces)
        return [p.replace(self._stand_in, "\u2581") for p in pieces]

    def decode(self, ids: int | Iterable[int] | np.ndarray, skip_special_tokens: bool = True
               ) -> str:
        """Text of ``ids``: a list or tuple (or other iterable) of ints or numpy integers, a 1-D
        numpy integer array (any integer dtype), or a single id.

        TypeError for anything else: a float (not truncated), a bool or ``np.bool_`` (not a
        token id), a str or bytes (text: see :meth:`encode`). ValueError naming the first id
        outside ``[0, 2**32)`` and its position. An id in ``[vocab_size, 2**32)`` decodes to
        nothing, as in transformers: a model's vocabulary may be larger than its tokenizer's
        (padded embedding rows), and generate and infill decode the ids the model samples."""
        if type(ids) is list and set(map(type, ids)) <= _INT:  # the common case, kept fast
            out = ids
        else:
            out = _id_list(ids)
        if out and (min(out) < 0 or max(out) >= _ID_LIMIT):
            i, v = next((i, v) for i, v in enumerate(out) if v < 0 or v >= _ID_LIMIT)
            raise ValueError(f"token id {v} at position {i} is out of range: token ids lie in "
                             f"[0, 2**32) (this tokenizer's vocab_size is {self.vocab_size})")
        return self.backend.decode(out, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id})"
        )


ENCODE_SLICE = 4096  # texts tokenized at once (in parallel inside `tokenizers`)
_INT = frozenset({int})
_ID_LIMIT = 1 << 32  # the tokenizers library's ids are u32


def _id_list(ids: Any) -> list[int]:
    """``ids`` (see :meth:`Tokenizer.decode`) as a list of Python ints."""
    if isinstance(ids, np.ndarray):
        if ids.ndim > 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.dtype.kind in "iu":
            return ids.reshape(-1).tolist()
        if ids.dtype != object:
            raise TypeError(f"ids must be token ids (int), got an array of dtype {ids.dtype}")
        ids = ids.reshape(-1).tolist()
    elif isinstance(ids, (str, bytes, bytearray)):
        raise TypeError(f"ids must be token ids (int), not a {type(ids).__name__}: encode text "
                        "with encode()")
    elif isinstance(ids, (int, np.integer)) and not isinstance(ids, (bool, np.timedelta64)):
        return [int(ids)]
    try:
        items = list(ids)
    except TypeError:
        raise TypeError(f"ids must be token ids (int), got {type(ids).__name__}") from None
    out = []
    for i, v in enumerate(items):
        if type(v) is not int:
            try:
                if isinstance(v, (bool, np.bool_)):
                    raise TypeError
                v = operator.index(v)
            except TypeError:
                raise TypeError(f"ids must be token ids (int): the id at position {i} is "
                                f"{_short(v)} ({type(v).__name__})") from None
        out.append(v)
    return out


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _space_stand_in(node: dict[str, Any] | None) -> str:
    """The character a ``Replace(" ", X)`` normalizer puts for a space when it is not ``▁``
    (the llama2.c loader's), else ""."""
    if not node:
        return ""
    if node.get("type") == "Sequence":
        return next((x for x in map(_space_stand_in, node.get("normalizers", [])) if x), "")
    if node.get("type") == "Replace" and node.get("pattern", {}).get("String") == " ":
        content = node.get("content", "")
        return content if len(content) == 1 and content not in ("\u2581", " ") else ""
    return ""


def _without_prepend(node: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """A normalizer description without its ``Prepend`` steps, and whether there were any."""
    if node.get("type") == "Prepend":
        return None, True
    if node.get("type") == "Sequence":
        kept, changed = [], False
        for child in node.get("normalizers", []):
            c, n = _without_prepend(child)
            changed |= n
            if c is not None:
                kept.append(c)
        return {**node, "normalizers": kept}, changed
    return node, False


def _no_prefix_space(node: dict[str, Any]) -> bool:
    """Switches off, in place, the prefix space of the pre-tokenizers in ``node``."""
    kind = node.get("type")
    if kind == "Sequence":
        changed = False
        for child in node.get("pretokenizers", []):
            changed |= _no_prefix_space(child)
        return changed
    changed = False
    if kind == "Metaspace" and node.get("prepend_scheme", "never") != "never":
        node["prepend_scheme"] = "never"
        changed = True
    if kind in ("Metaspace", "ByteLevel") and node.get("add_prefix_space"):
        node["add_prefix_space"] = False
        changed = True
    return changed
