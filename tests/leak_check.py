"""Leak check (issue 7): load -> forward -> adapt a few steps -> generate -> embed -> free, in a
loop, on stories260K.

``python tests/leak_check.py`` runs the loop; ``python tests/leak_check.py --valgrind`` runs it
under ``valgrind --leak-check=full`` and fails on any *definite* leak whose stack passes through
magnet's extension (a ``_C*.so`` frame or a ``csrc/`` source line). Leaks that CPython, NumPy,
OpenBLAS or libgomp make on their own are not ours and are not reported (filtering on our frames
is simpler and stricter than a suppression file). Also collected by pytest as a slow test.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Once upon a time there was a little cat.", "The dog ran to the park and played."] * 3


def loop(rounds: int = 2) -> None:
    import numpy as np

    import magnet

    magnet.set_num_threads(1)
    for _ in range(rounds):
        m = magnet.Model.from_pretrained("stories260K")
        ids = np.arange(12).reshape(2, 6)
        m.logits(ids)
        m.hidden_states(ids, roles=np.zeros_like(ids))
        with tempfile.TemporaryDirectory() as d:
            m.adapt(TEXTS, steps=2, batch_size=2, seq_len=16, lora_rank=2, progress=False,
                    checkpoint_dir=d, checkpoint_every=1)
        m.generate(["Once upon", "The dog"], max_new_tokens=4, do_sample=True, seed=1)
        m.embed(TEXTS[:2])
        m.merge_lora()
        try:  # an error path must not leak either
            m.logits([[10**6]])
        except ValueError:
            pass
        del m
        gc.collect()


def ours(record: str) -> bool:
    return bool(re.search(r"_C\.cpython|_C\.abi3|/csrc/", record))


def run_valgrind() -> int:
    cmd = ["valgrind", "--leak-check=full", "--show-leak-kinds=definite",
           "--errors-for-leak-kinds=definite", "--num-callers=40", sys.executable,
           os.fspath(Path(__file__).resolve()), "--loop"]
    env = dict(os.environ, PYTHONMALLOC="malloc", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.fspath(ROOT))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    log = proc.stderr
    if proc.returncode not in (0,) and "LEAK SUMMARY" not in log and "ERROR SUMMARY" not in log:
        print(log[-4000:])
        return 1
    records = re.split(r"==\d+== \n", log)
    definite = [r for r in records if "definitely lost in loss record" in r]
    mine = [r for r in definite if ours(r)]
    summary = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", log)
    print(f"valgrind: {len(definite)} definite-leak records in all "
          f"({summary.group(0) if summary else 'no summary'}); {len(mine)} through magnet._C")
    for r in mine:
        print(r)
    return 1 if mine else 0


def test_no_definite_leaks_in_magnet() -> None:
    import shutil

    import pytest

    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    assert run_valgrind() == 0


try:
    import pytest

    test_no_definite_leaks_in_magnet = pytest.mark.slow(test_no_definite_leaks_in_magnet)
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    if "--loop" in sys.argv:
        loop()
    elif "--valgrind" in sys.argv:
        sys.exit(run_valgrind())
    else:
        loop()
        print("leak_check loop: ok")
