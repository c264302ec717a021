"""atheris harness: the GGUF reader (header, metadata key/values, tensor infos, alignment,
dequantization of every supported type) through ``magnet._C.read_gguf``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checked, main, scratch_file  # noqa: E402

from magnet import _C  # noqa: E402

PATH = scratch_file(".gguf")


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    checked(lambda: _C.read_gguf(str(PATH)))


if __name__ == "__main__":
    main(test_one_input, "gguf")
