"""magnet.data.read_texts on .txt files: where documents and lines end."""

from __future__ import annotations

from magnet.data import read_texts


def test_txt_without_blank_lines_splits_at_newlines_only(tmp_path):
    """One document per line, lines ending at \\n, \\r\\n or \\r: a form feed, U+2028 or \\x85
    inside a line (str.splitlines() breaks at them) stays inside its document."""
    path = tmp_path / "docs.txt"
    path.write_bytes("first doc\x0cstill first\r\nsecond doc\u2028still second\n"
                     "third\x85doc\rfourth doc\n".encode())
    assert read_texts(path) == ["first doc\x0cstill first", "second doc\u2028still second",
                                "third\x85doc", "fourth doc"]
