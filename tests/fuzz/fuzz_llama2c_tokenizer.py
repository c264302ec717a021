"""atheris harness: the llama2.c tokenizer reader (max length, then score / length / bytes per
piece) through ``magnet._C.read_llama2c_tokenizer``. The first 2 bytes choose vocab_size."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checked, main, scratch_file  # noqa: E402

from magnet import _C  # noqa: E402

PATH = scratch_file(".tok.bin")


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    vocab = int.from_bytes(data[:2], "little", signed=True)
    PATH.write_bytes(data[2:])
    checked(lambda: _C.read_llama2c_tokenizer(str(PATH), vocab))


if __name__ == "__main__":
    main(test_one_input, "llama2c_tokenizer")
