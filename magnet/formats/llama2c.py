"""llama2.c checkpoints (Karpathy's ``run.c`` format) and their ``tokenizer.bin`` vocabularies.

The C reader (``magnet._C.read_llama2c``) validates the file and returns the weights already in
magnet's parameter names, with ``wq``/``wk`` rows reordered from llama2.c's interleaved RoPE
pairs to the rotate-half layout the C core uses. This module turns the header into a
`ModelConfig` and the vocabulary into a `tokenizers` BPE that encodes exactly like llama2.c's
``encode``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import tokenizers
from tokenizers import decoders, normalizers

from magnet import _C
from magnet.config import ModelConfig
from magnet.formats import Loaded
from magnet.tokenizer import Tokenizer

# llama2.c's exporter writes SentencePiece's ids: 0 <unk>, 1 <s>, 2 </s>, then 256 byte pieces.
BOS_ID = 1
EOS_ID = 2
_SPECIAL_NAMES = {0: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
# The vocabulary's space inside the `tokenizers` model. llama2.c's exporter wrote SentencePiece's
# "▁" as a plain space, so a "▁" typed in the text is an ordinary character there (its UTF-8
# bytes). Were "▁" the stand-in, it would encode as a space; a Unicode noncharacter, which
# text meant for interchange does not contain, keeps the two apart.
_SPACE = "\ufdd0"


def load_llama2c(
    path: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None
) -> Loaded:
    """Load a llama2.c checkpoint.

    ``path`` is the checkpoint ``.bin`` or a directory holding exactly one checkpoint ``.bin``
    (files named ``tok*.bin`` are taken for tokenizers). ``tokenizer`` names the tokenizer file;
    without it one is looked for beside the checkpoint (``tok{vocab_size}.bin``,
    ``tokenizer.bin``, or the directory's only ``tok*.bin``); none found gives
    ``Loaded.tokenizer = None``.
    """
    checkpoint, directory = _resolve_checkpoint(Path(os.fspath(path)))
    header, tensors = _C.read_llama2c(str(checkpoint))
    vocab_size = int(header["vocab_size"])
    config = ModelConfig(
        arch="llama",
        vocab_size=vocab_size,
        hidden_size=int(header["dim"]),
        num_layers=int(header["n_layers"]),
        num_heads=int(header["n_heads"]),
        num_kv_heads=int(header["n_kv_heads"]),
        head_dim=int(header["dim"]) // int(header["n_heads"]),
        intermediate_size=int(header["hidden_dim"]),
        max_positions=int(header["seq_len"]),
        norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=bool(header["shared_classifier"]),
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        model_type="llama2c",
        source={"format": "llama2.c", "path": str(checkpoint), "header": dict(header)},
    )
    if tokenizer is not None:
        tok_path: Path | None = Path(os.fspath(tokenizer))
        if not tok_path.is_file():
            raise FileNotFoundError(f"llama2.c tokenizer not found: {tok_path}")
    else:
        tok_path = _find_tokenizer(directory, vocab_size)
    tok = load_llama2c_tokenizer(tok_path, vocab_size) if tok_path is not None else None
    return Loaded(config=config, tensors=tensors, tokenizer=tok)


def _resolve_checkpoint(path: Path) -> tuple[Path, Path]:
    """The checkpoint file and the directory to look for a tokenizer in."""
    if path.is_file():
        return path, path.parent
    if path.is_dir():
        candidates = sorted(
            p for p in path.glob("*.bin") if p.is_file() and not p.name.startswith("tok")
        )
        if len(candidates) != 1:
            names = ", ".join(p.name for p in candidates) or "none"
            raise ValueError(
                f"expected exactly one llama2.c checkpoint .bin (not tok*.bin) in {path}, "
                f"found {names}; pass the file itself"
            )
        return candidates[0], path
    raise FileNotFoundError(f"llama2.c checkpoint not found: {path}")


def _find_tokenizer(directory: Path, vocab_size: int) -> Path | None:
    for name in (f"tok{vocab_size}.bin", "tokenizer.bin"):
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.glob("tok*.bin") if p.is_file())
    return found[0] if len(found) == 1 else None


def load_llama2c_tokenizer(path: str | os.PathLike[str], vocab_size: int) -> Tokenizer:
    """A `Tokenizer` for a llama2.c ``tokenizer.bin`` holding ``vocab_size`` pieces.

    Encoding matches llama2.c's ``encode``: a space is prepended, each character becomes its
    piece (or its UTF-8 bytes as ``<0xXX>`` pieces), then the adjacent pair whose concatenation
    is the highest-scoring piece is merged until none is left. As a `tokenizers` BPE that is the
    merge list of every (a, b) with a + b in the vocabulary, ranked by the score of a + b (what
    a SentencePiece BPE converter builds). Decoding maps ``<0xXX>`` to bytes and the space
    stand-in back to a space, and drops the one leading space, which is llama2.c's output for a
    sequence that starts at BOS.
    """
    pieces, scores, _max_len = _C.read_llama2c_tokenizer(os.fspath(path), int(vocab_size))
    return Tokenizer(_build_backend(pieces, scores), bos_id=BOS_ID, eos_id=EOS_ID)


def _build_backend(pieces: list[bytes], scores: list[float]) -> tokenizers.Tokenizer:
    vocab: dict[str, int] = {}
    for i, raw in enumerate(pieces):
        if i in _SPECIAL_NAMES:
            name = _SPECIAL_NAMES[i]
        else:
            try:
                name = raw.decode("utf-8").replace(" ", _SPACE)
            except UnicodeDecodeError as e:
                raise ValueError(f"llama2.c tokenizer piece {i} is not UTF-8: {raw!r}") from e
        if name in vocab:
            raise ValueError(
                f"llama2.c tokenizer has piece {name!r} twice (ids {vocab[name]} and {i})"
            )
        vocab[name] = i

    ranked: list[tuple[float, int, int, str, str]] = []
    for name, i in vocab.items():
        if i in _SPECIAL_NAMES or _BYTE_PIECE.fullmatch(name) or len(name) < 2:
            continue
        for cut in range(1, len(name)):
            left, right = name[:cut], name[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, vocab[left], left, right))
    ranked.sort()
    merges = [(left, right) for _s, _i, _l, left, right in ranked]

    model = tokenizers.models.BPE(
        vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True
    )
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(_SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens(
        [tokenizers.AddedToken(n, special=True, normalized=False) for n in _SPECIAL_NAMES.values()]
    )
    # llama2.c never treats "<s>" typed in the text as BOS; neither should we.
    backend.encode_special_tokens = True
    return backend
