"""magnet.data.read_texts on .txt files: where documents and lines end."""

from __future__ import annotations

import os
import re
import threading

import pytest

from magnet.data import read_texts


def test_txt_without_blank_lines_splits_at_newlines_only(tmp_path):
    """One document per line, lines ending at \\n, \\r\\n or \\r: a form feed, U+2028 or \\x85
    inside a line (str.splitlines() breaks at them) stays inside its document."""
    path = tmp_path / "docs.txt"
    path.write_bytes("first doc\x0cstill first\r\nsecond doc\u2028still second\n"
                     "third\x85doc\rfourth doc\n".encode())
    assert read_texts(path) == ["first doc\x0cstill first", "second doc\u2028still second",
                                "third\x85doc", "fourth doc"]


def test_txt_not_utf8_names_file_and_line(tmp_path):
    """Undecodable bytes were replaced by U+FFFD and trained on; now the same error as
    ``magnet embed --input``: FILE:LINE: not UTF-8 text."""
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"A dog ran.\n\nThe caf\xe9 was open.\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text"):
        read_texts(path)


def test_txt_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufefffirst doc\r\n\r\nsecond doc\r\n".encode())
    assert read_texts(path) == ["first doc", "second doc"]


def test_data_from_a_fifo(tmp_path):
    """A named pipe (as /dev/stdin or a shell's <(...) are) is read once, as .txt; it used to be
    'training data file not found'."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(b"first doc\nstill first\n\nsecond doc\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        assert read_texts(fifo) == ["first doc\nstill first", "second doc"]
    finally:
        if writer.is_alive():  # unblock the writer if the read failed before opening the pipe
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)


def test_data_missing_or_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="training data file not found"):
        read_texts(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_texts(tmp_path)


def test_a_corpus_is_tokenized_a_slice_at_a_time(monkeypatch):
    """adapt's training data (and encode_batch) go to the tokenizers library ENCODE_SLICE texts
    at a time: its Encoding objects cost kilobytes each, and a whole 15 MB file at once peaked
    2 GB above the baseline (about 240 MB in slices). Slicing changes no chunk."""
    import numpy as np

    import magnet
    import magnet.tokenizer
    from magnet.data import ChunkStream

    stories = magnet.Model.from_pretrained("stories260K")  # shipped with the package
    texts = [f"Tom saw {i} little birds in the tall green tree by the river." for i in range(50)]
    tok = stories.tokenizer
    whole = ChunkStream(texts, tok, seq_len=8, seed=0)._chunks
    sizes: list[int] = []

    class Spy:
        def __init__(self, backend):
            self._backend = backend

        def encode_batch(self, items, **kw):
            sizes.append(len(items))
            return self._backend.encode_batch(items, **kw)

        def __getattr__(self, name):
            return getattr(self._backend, name)

    monkeypatch.setattr(tok, "backend", Spy(tok.backend))
    monkeypatch.setattr(magnet.tokenizer, "ENCODE_SLICE", 7)
    sliced = ChunkStream(texts, tok, seq_len=8, seed=0)._chunks
    assert sizes and max(sizes) <= 7 and sum(sizes) == len(texts)
    assert len(sliced) == len(whole) and all(np.array_equal(a, b)
                                             for a, b in zip(sliced, whole, strict=True))
    sizes.clear()
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert max(sizes) <= 7
