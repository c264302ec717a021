"""Training text: where it comes from, and how it becomes token chunks in a fixed order."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from magnet.tokenizer import Tokenizer

TextSource = str | os.PathLike | Iterable[str]


def read_texts(data: TextSource) -> Iterable[str]:
    """The documents of ``data``.

    - a list/tuple of str: the documents themselves;
    - a path to ``.txt``: one document per block of lines separated by a blank line (a file
      without blank lines is one document per line); UTF-8 (a leading byte-order mark
      dropped), undecodable bytes raise ValueError naming the file and line;
    - a path to ``.jsonl``: one JSON object per line with a ``"text"`` field;
    - a path to a pipe or device (``/dev/stdin``, a shell's ``<(...)``): read once, as ``.txt``
      unless its name ends in ``.jsonl``;
    - any other iterable of str (a generator, a dataset column): streamed as it comes.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        # any non-directory that exists: a regular file, a pipe, a character device
        if not path.exists():
            raise FileNotFoundError(f"training data file not found: {os.fspath(data)!r}")
        if path.is_dir():
            raise IsADirectoryError(f"training data {os.fspath(data)!r} is a directory, "
                                    "not a .txt or .jsonl file")
        if path.suffix == ".jsonl":
            return list(_read_jsonl(path))
        if path.suffix in (".txt", ".text", ".tokens", ".md", ""):
            return _read_txt(path)
        raise ValueError(f"{path}: unsupported data file type (use .txt or .jsonl)")
    if isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be text, not bytes")
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a list of str, a .txt/.jsonl path or an iterable of str, "
            f"got {type(data).__name__}"
        )
    return data


def _read_txt(path: Path) -> list[str]:
    # strict UTF-8 and BOM-dropping as ``magnet embed --input``; lines end at \n, \r\n or \r
    # (text_lines drops the \r before a \n), not at the other breaks of str.splitlines()
    # (\x0c, U+2028, ...), which may occur inside a document
    text = "\n".join(text_lines(path.read_bytes(), os.fspath(path))).replace("\r", "\n")
    blocks = [b.strip() for b in text.split("\n\n")]
    blocks = [b for b in blocks if b]
    if len(blocks) <= 1:
        blocks = [line.strip() for line in text.split("\n") if line.strip()]
    return blocks


def _read_jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
            yield obj["text"]


def text_lines(data: bytes, name: str, error: type[ValueError] = ValueError) -> list[str]:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped) and split at ``\\n`` only,
    a ``\\r`` before it dropped: str.splitlines() would also break at \\x0b, \\x0c,
    \\x1c-\\x1e, \\x85, U+2028 and U+2029, which may occur inside a text. Empty lines are kept;
    a final newline does not start another line. Undecodable bytes raise ``error`` naming
    ``name`` and the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - data.rfind(b"\n", 0, e.start)
        raise error(f"{name}:{line}: not UTF-8 text ({e.reason} at byte {col} of the line)"
                    ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


class ChunkStream:
    """Token chunks of at most ``seq_len`` tokens (BOS first), in a reproducible order.

    A finite source (list, file) is tokenized once and its chunks are shuffled per epoch with
    ``seed``; an open-ended iterable is consumed in order. ``position`` counts chunks handed out,
    which is all a checkpoint needs to continue the same sequence.
    """

    def __init__(self, texts: Iterable[str], tokenizer: Tokenizer, seq_len: int, seed: int,
                 min_tokens: int = 2, what: str = "the training data") -> None:
        self.what = what
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.seed = seed
        self.min_tokens = min_tokens
        self.position = 0
        self._finite = isinstance(texts, (list, tuple))
        self._chunks: list[np.ndarray] = []
        self._order: np.ndarray | None = None
        self._epoch = -1
        self._iter: Iterator[str] | None = None
        self._pending: list[np.ndarray] = []
        if self._finite:
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"{what}: text {i} is {type(t).__name__}, not str")
            # one text's ids at a time: only the corpus's chunks (int32 arrays) stay
            for ids in tokenizer.encode_iter(list(texts), add_bos=False, add_eos=False):
                self._chunks.extend(self._split(ids))
            if not self._chunks:
                raise ValueError(
                    f"{what} holds no text of at least {min_tokens} tokens"
                )
        else:
            self._iter = iter(texts)

    def _split(self, ids: list[int]) -> list[np.ndarray]:
        bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
        body = self.seq_len - len(bos)
        out = []
        for start in range(0, len(ids), body):
            piece = bos + ids[start:start + body]
            if len(piece) >= self.min_tokens:
                out.append(np.asarray(piece, dtype=np.int32))
        return out

    def _next_streamed(self) -> np.ndarray:
        while not self._pending:
            try:
                t = next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError(
                    f"{self.what} (streamed) ran out before training ended"
                ) from None
            if not isinstance(t, str):
                raise TypeError(f"{self.what}: text {self.position} is {type(t).__name__}, "
                                "not str")
            ids = self.tokenizer.encode(t, add_bos=False, add_eos=False)
            self._pending.extend(self._split(ids))
        return self._pending.pop(0)

    def _chunk_at(self, position: int) -> np.ndarray:
        epoch, i = divmod(position, len(self._chunks))
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self._chunks))
            self._epoch = epoch
        return self._chunks[int(self._order[i])]  # type: ignore[index]

    def take(self, n: int) -> list[np.ndarray]:
        """The next ``n`` chunks."""
        if self._finite:
            out = [self._chunk_at(self.position + i) for i in range(n)]
        else:
            out = [self._next_streamed() for _ in range(n)]
        self.position += n
        return out

    def skip_to(self, position: int) -> None:
        """Continue from ``position`` (a checkpoint's), re-reading a stream up to it."""
        if self._finite:
            self.position = position
        else:
            while self.position < position:
                self.take(1)


def pad_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int32 [len(rows), max_len] and the int32 lengths."""
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    out = np.zeros((len(rows), int(lengths.max())), dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths
