"""Concurrent use of one model: inference from several threads, and adapt beside inference."""

from __future__ import annotations

import threading

import numpy as np

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
