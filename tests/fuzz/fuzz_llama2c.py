"""atheris harness: the llama2.c checkpoint reader (7-int header, shared classifier, tensor
sizes) through ``magnet._C.read_llama2c``; a file that loads also builds a model and runs a
3-token forward."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import checked, main, scratch_file  # noqa: E402

from magnet import _C  # noqa: E402

PATH = scratch_file(".bin")


def load_and_run() -> None:
    header, tensors = _C.read_llama2c(str(PATH))
    if header["dim"] * header["vocab_size"] > 1 << 22:
        return  # a large valid model: loading is what was under test
    import magnet
    from magnet.formats.llama2c import load_llama2c

    loaded = load_llama2c(PATH, tokenizer=None)
    m = magnet.Model(loaded.config, loaded.tensors, None)
    ids = np.arange(3) % max(1, m.config.vocab_size)
    m.logits(ids)


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    checked(load_and_run)


if __name__ == "__main__":
    main(test_one_input, "llama2c")
