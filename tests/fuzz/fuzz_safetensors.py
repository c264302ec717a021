"""atheris harness: the safetensors reader (8-byte header length, JSON header, dtypes, shapes,
data_offsets) through ``magnet._C.read_safetensors``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import checked, main, scratch_file  # noqa: E402

from magnet import _C  # noqa: E402

PATH = scratch_file(".safetensors")


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    checked(lambda: _C.read_safetensors(str(PATH)))


if __name__ == "__main__":
    main(test_one_input, "safetensors")
