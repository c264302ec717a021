"""Concurrent use of one model: inference from several threads, and adapt beside inference."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import magnet


def test_parallel_logits_equal_serial(stories_dir):
    m = magnet.Model.from_pretrained(stories_dir)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 512, size=(2, 17 + i)) for i in range(8)]
    roles = [(rng.random(b.shape) < 0.5).astype(np.uint8) for b in batches]
    serial = [m.logits(b, roles=r) for b, r in zip(batches, roles, strict=True)]
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for i in range(k, len(batches), 4):
            for _ in range(3):
                results[i] = m.logits(batches[i], roles=roles[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ref in enumerate(serial):
        np.testing.assert_array_equal(results[i], ref)


def test_adapt_beside_inference_leaves_weights_as_a_serial_run(stories_dir):
    texts = [f"Once upon a time a little {w} found a {v} in the park and was happy."
             for w in ("dog", "cat", "bird", "girl", "boy") for v in ("ball", "box", "tree")]
    kw = dict(steps=6, batch_size=4, seq_len=32, progress=False, seed=1)
    magnet.set_num_threads(1)
    try:
        serial = magnet.Model.from_pretrained(stories_dir)
        serial.adapt(texts, **kw)
        m = magnet.Model.from_pretrained(stories_dir)
        stop = threading.Event()
        errors: list[BaseException] = []
        calls = [0]

        def infer() -> None:
            ids = np.arange(1, 40) % 512
            try:
                while not stop.is_set():
                    out = m.logits(ids)
                    assert np.isfinite(out).all()
                    calls[0] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=infer)
        t.start()
        try:
            m.adapt(texts, **kw)
        finally:
            stop.set()
            t.join()
        assert not errors, errors
        assert calls[0] > 0
        ours, ref = m._c.lora_state_dict(), serial._c.lora_state_dict()
        for name in ref:
            np.testing.assert_array_equal(ours[name], ref[name])
    finally:
        magnet.set_num_threads(magnet._C.cpu_count())


# A product large enough for OpenBLAS to split into jobs that wait for each other, then the same
# on more rows (through the packed GEMM where the build has it, else OpenBLAS again); prints the
# thread count magnet settled on.
_THREADED_PRODUCTS = """
import numpy as np
import magnet
from magnet import _C
magnet.set_num_threads(2)
rng = np.random.default_rng(0)
for n in (300, 600):
    x = rng.standard_normal((n, 600), dtype=np.float32)
    w = rng.standard_normal((200, 600), dtype=np.float32)
    d = rng.standard_normal((n, 200), dtype=np.float32)
    _C.op_matmul(x, w, None, d)
print(magnet.get_num_threads())
"""


@pytest.mark.parametrize("env, threads", [({"OMP_DYNAMIC": "true"}, "2"),
                                          ({"OMP_THREAD_LIMIT": "1"}, "1")])
def test_openmp_settings_do_not_hang_the_blas(env, threads):
    """OpenBLAS's jobs run on an OpenMP team and wait for each other, so a team smaller than the
    job count used to hang for ever: OMP_DYNAMIC=true let OpenMP hand out fewer threads, and
    OMP_THREAD_LIMIT capped them below magnet's count. Both now finish, with OMP_THREAD_LIMIT
    capping magnet's thread count."""
    r = subprocess.run([sys.executable, "-c", _THREADED_PRODUCTS], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == threads


@pytest.mark.parametrize("other", ["merge", "adapt_other_rank"])
def test_adapters_swapped_during_adapt_stop_it_cleanly(stories_dir, other):
    """merge_lora() or a second adapt() with another rank while adapt() trains: the training
    run stops with a clear error at its next step (it used to write through stale sizes and
    crash); the model stays usable."""
    m = magnet.Model.from_pretrained(stories_dir)
    texts = [f"Once upon a time a little dog number {i} found a ball." for i in range(40)]
    started = threading.Event()
    errors: list[BaseException] = []

    def train() -> None:
        try:
            m.adapt(texts, steps=400, batch_size=2, seq_len=24, lora_rank=2, progress=False,
                    callback=lambda rec: started.set())
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    t = threading.Thread(target=train)
    t.start()
    assert started.wait(60)
    if other == "merge":
        m.merge_lora()
    else:
        m.adapt(texts, steps=2, batch_size=2, seq_len=24, lora_rank=8, progress=False)
    t.join(120)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors
    assert "adapters were attached, merged or detached" in str(errors[0])
    assert np.isfinite(m.logits([1, 5, 9])).all()
