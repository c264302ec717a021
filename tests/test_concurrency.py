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
    crash); the model stays usable. A second adapt() (or a to()) is refused at once: both would
    lose the other's work (two runs of the same rank interleaved their steps silently; to()
    replaced the model the first was training)."""
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
    if other != "merge":
        for rank in (2, 8):
            with pytest.raises(ValueError, match="adapt.. or to.. is running on this model"):
                m.adapt(texts, steps=2, batch_size=2, seq_len=24, lora_rank=rank,
                        progress=False)
        with pytest.raises(ValueError, match="to.. is running|adapt.. or to.. is running"):
            m.to("cpu")
    m.merge_lora()  # stops the first run
    t.join(120)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors
    assert "adapters were attached, merged or detached" in str(errors[0])
    assert np.isfinite(m.logits([1, 5, 9])).all()


# Four threads call logits in a loop while the main thread merges the adapters: prints how long
# the merge (an exclusive writer) waited.
_BUSY_READERS = """
import threading, time, numpy as np, magnet
m = magnet.Model.from_pretrained("stories260K")
m.adapt(["A dog ran to the park and played."] * 8, steps=1, batch_size=2, seq_len=16,
        progress=False)
stop = threading.Event()
def read():
    ids = np.arange(1, 40) % 512
    while not stop.is_set():
        m.logits(ids)
readers = [threading.Thread(target=read) for _ in range(4)]
for r in readers:
    r.start()
time.sleep(0.5)
t0 = time.perf_counter()
m.merge_lora()
print(time.perf_counter() - t0)
stop.set()
for r in readers:
    r.join()
"""


def test_a_writer_is_not_starved_by_busy_readers():
    """With two or more threads reading in a loop, their calls overlap, and the model's lock
    (which preferred readers) never let merge_lora() or an optimizer step in: the merge waited
    for ever. A waiting writer now goes before new readers."""
    try:
        r = subprocess.run([sys.executable, "-c", _BUSY_READERS], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("merge_lora() did not return within 60 s beside four reading threads")
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout) < 10.0


def test_snapshot_reads_weights_and_adapters_together(stories_dir):
    """save_pretrained reads both with one call, so a merge cannot land between them."""
    m = magnet.Model.from_pretrained(stories_dir)
    assert m._c.snapshot()[0] is None and m._c.snapshot()[2] == {}
    m.adapt(["A dog ran to the park and played."] * 8, steps=2, batch_size=2, seq_len=16,
            progress=False)
    info, weights, adapters = m._c.snapshot()
    assert info == m._c.lora_info()
    for got, want in ((weights, m.state_dict()), (adapters, m._c.lora_state_dict())):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_generator_refuses_logprob_and_finish_while_another_thread_steps_it(stories_dir):
    """logprob, finish, finished and length read or wrote a generator's logits, row flags and
    cache length without claiming it, so a decode_step running in another thread (the GIL
    released) could rewrite them under the reader. They now take the claim as every step does:
    each call either runs alone or raises the documented RuntimeError, and the logprobs it gives
    are finite."""
    from magnet import _C

    m = magnet.Model.from_pretrained(stories_dir)
    B, capacity = 128, 200
    refused = {"logprob": 0, "finish": 0, "finished": 0, "length": 0}
    tokens = np.zeros(B, np.int32)
    for _ in range(20):
        gen = _C.Generator(m._c, B, capacity)
        ones = np.ones((B, 1), np.int32)
        gen.append(ones, np.ones((B, 1), np.uint8), np.zeros((B, 1), np.int32),
                   np.zeros((B, 1), np.int32))
        done = threading.Event()

        def decode(gen: _C.Generator = gen, done: threading.Event = done) -> None:
            try:
                steps = 1
                while steps < capacity - 1 and min(refused.values()) == 0:
                    try:
                        gen.decode_step()
                        steps += 1
                    except RuntimeError as e:  # the main thread holds the claim: try again
                        assert "in use by another thread" in str(e)
            finally:
                done.set()

        thread = threading.Thread(target=decode)
        thread.start()
        calls = {"logprob": lambda g=gen: g.logprob(tokens),
                 "finish": lambda g=gen: g.finish(B - 1),
                 "finished": lambda g=gen: g.finished,
                 "length": lambda g=gen: g.length}
        while not done.is_set():
            for name, call in calls.items():
                try:
                    out = call()
                except RuntimeError as e:
                    assert "in use by another thread" in str(e)
                    refused[name] += 1
                else:
                    if name == "logprob":
                        assert np.isfinite(out).all()
        thread.join()
        if min(refused.values()) > 0:
            break
    assert min(refused.values()) > 0, refused


def test_a_generator_is_initialised_by_one_thread_only(stories_dir):
    """Two threads' __init__ on one Generator object both passed the "already initialised"
    check (the build runs with the GIL released) and built into the same session: a 1-row and a
    3-row build mixed, and the next step segfaulted. Now exactly one of them builds it."""
    from magnet import _C

    m = magnet.Model.from_pretrained(stories_dir)
    for _ in range(10):
        gen = _C.Generator.__new__(_C.Generator)
        barrier = threading.Barrier(2)
        built: list[int] = []
        refused: list[str] = []

        def init(rows: int, capacity: int, gen: _C.Generator = gen,
                 barrier: threading.Barrier = barrier, built: list[int] = built,
                 refused: list[str] = refused) -> None:
            barrier.wait()
            try:
                gen.__init__(m._c, rows, capacity)
                built.append(rows)
            except RuntimeError as e:
                refused.append(str(e))

        threads = [threading.Thread(target=init, args=(1, 8192)),
                   threading.Thread(target=init, args=(3, 16))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(built) == 1 and len(refused) == 1, (built, refused)
        assert "already initialised" in refused[0]
        B = built[0]
        assert gen.finished.shape == (B,)
        gen.append(np.full((B, 4), 7, np.int32), np.ones((B, 4), np.uint8),
                   np.zeros((B, 4), np.int32), np.tile(np.arange(4, dtype=np.int32), (B, 1)))
        for _ in range(8):
            tokens, logprobs = gen.decode_step()
            assert tokens.shape == (B,) and np.isfinite(logprobs).all()


def _trainer_batch(seed: int, length: int) -> tuple:
    rng = np.random.default_rng(seed)
    masked = rng.integers(4, 512, size=(3, length)).astype(np.int32)
    a = rng.integers(4, 512, size=(3, length // 2)).astype(np.int32)
    return (masked, np.full(3, length, np.int32), a, np.full(3, length // 2, np.int32),
            np.ones(3, np.int32), None, None, None, 1.0, 1.0, 1.0, 0, 1.0, seed, True)


@pytest.mark.parametrize("other", ["micro_step", "zero_grad", "grad_dict", "state"])
def test_a_trainer_runs_one_method_at_a_time(stories_dir, other):
    """micro_step, zero_grad and grad_dict took only the model's read lock, which lets
    inference run beside training but did not keep two threads apart on one Trainer: a second
    micro_step re-laid the first one's activations under it (ASan: heap-use-after-free; wrong
    losses), and zero_grad or grad_dict tore its gradients. Now the second caller gets a
    RuntimeError, and every step that runs gives the losses it gives alone."""
    from magnet import _C
    from magnet.adapt import LORA_TARGETS

    m = magnet.Model.from_pretrained(stories_dir)
    m._c.attach_lora(4, 8.0, (1 << LORA_TARGETS["wq"]) | (1 << LORA_TARGETS["wv"]), 1)
    trainer = _C.Trainer(m._c, {"mask_token_id": 0, "lora_dropout": 0.0, "resid_dropout": 0.0})
    batches = [_trainer_batch(seed, 96) for seed in range(4)]
    alone = [trainer.micro_step(*b) for b in batches]  # losses depend on the weights only
    refused = 0
    for _ in range(10):
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def steps(barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            nonlocal refused
            barrier.wait()
            for batch, expected in zip(batches, alone, strict=True):
                try:
                    assert trainer.micro_step(*batch) == expected
                except RuntimeError as e:
                    assert "in use by another thread" in str(e)
                    refused += 1
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

        def second(barrier: threading.Barrier = barrier) -> None:
            nonlocal refused
            barrier.wait()
            for batch in batches:
                try:
                    if other == "micro_step":
                        trainer.micro_step(*batch)
                    else:
                        getattr(trainer, other)()
                except RuntimeError as e:
                    assert "in use by another thread" in str(e)
                    refused += 1

        threads = [threading.Thread(target=steps), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        if refused:
            break
    assert refused > 0
    trainer.zero_grad()
    assert trainer.micro_step(*batches[0]) == alone[0]  # usable afterwards


def test_openblas_keeps_the_count_set_while_calls_run(stories_dir):
    """OpenBLAS's thread count was set and recorded without a lock: two calls that read
    magnet's count on either side of a change could leave the record saying 1 while OpenBLAS
    kept 2, for good. Stress the change against running calls, then check that a call after
    the last change leaves OpenBLAS at that count."""
    import ctypes

    import scipy_openblas32

    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(),
                                   "lib" + scipy_openblas32.get_library() + ".so"))
    m = magnet.Model.from_pretrained(stories_dir)
    before = magnet.get_num_threads()
    stop = threading.Event()

    def toggle() -> None:
        i = 0
        while not stop.is_set():
            magnet.set_num_threads(1 + (i & 1))
            i += 1

    def work() -> None:
        for _ in range(20):
            m.logits(np.arange(1, 60) % 512)

    toggler = threading.Thread(target=toggle)
    workers = [threading.Thread(target=work) for _ in range(2)]
    try:
        toggler.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        stop.set()
        toggler.join()
    try:
        for n in (1, 2, 1):
            magnet.set_num_threads(n)
            m.logits(np.arange(1, 60) % 512)
            assert lib.scipy_openblas_get_num_threads() == n
    finally:
        magnet.set_num_threads(before)
