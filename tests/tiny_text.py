"""A word-level tokenizer over the tiny checkpoints' vocabulary (``w0 .. w95``), so the text APIs
(generate, infill, embed) can run on the random models of tests/hf_models.py."""

from __future__ import annotations

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from magnet.tokenizer import Tokenizer
from tests.hf_models import VOCAB


def word_tokenizer(bos_id: int | None = 1, eos_id: int | None = 2) -> Tokenizer:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    specials = [f"w{i}" for i in (bos_id, eos_id) if i is not None]
    backend.add_special_tokens(specials)
    return Tokenizer(backend, bos_id, eos_id, add_bos_default=bos_id is not None)


def words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)
