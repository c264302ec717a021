"""Text <-> token ids, through the `tokenizers` library whatever the checkpoint format."""

from __future__ import annotations

from collections.abc import Sequence

import tokenizers


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the model's special ids.

    ``encode(text, add_bos=True) -> list[int]`` and ``decode(ids) -> str``. Formats build one
    from their own description (``tokenizer.json``, GGUF metadata, a llama2.c vocabulary).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_id: int | None,
        eos_id: int | None,
        add_bos_default: bool = True,
    ) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos_default = add_bos_default

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; a BOS id first when ``add_bos`` (default: the model's habit)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_bos is None:
            add_bos = self.add_bos_default
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]:
        """``encode`` over many texts, in parallel inside the tokenizers library."""
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, got {type(t).__name__}")
        encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        if add_bos is None:
            add_bos = self.add_bos_default
        prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
        return [prefix + e.ids for e in encs]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id})"
        )
