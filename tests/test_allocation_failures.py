"""Running out of memory at any allocation gives a MemoryError and leaves every object as it was.

Two kinds of failure are injected:

- C allocations (`mg_alloc`), through ``magnet._C._fail_allocation_after(n)``, which only debug
  builds have (``MAGNET_DEBUG=1``; tests/sanitize.sh builds one and runs this file under ASan).
  The tests that need it skip elsewhere.
- Python allocations inside the bindings, through CPython's ``_testcapi.set_nomemory``, in a
  child process (a crash there fails the test instead of killing the run).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import magnet
from magnet import _C
from magnet.adapt import LORA_TARGETS

ALL_TARGETS = sum(1 << bit for bit in set(LORA_TARGETS.values()))
needs_fault_hook = pytest.mark.skipif(
    not hasattr(_C, "_fail_allocation_after"),
    reason="needs a debug build of magnet._C (MAGNET_DEBUG=1: tests/sanitize.sh runs this file)")


def _batch(seed: int = 0, length: int = 24) -> tuple:
    rng = np.random.default_rng(seed)
    masked = rng.integers(4, 512, size=(2, length)).astype(np.int32)
    a = rng.integers(4, 512, size=(3, 9)).astype(np.int32)
    return (masked, np.full(2, length, np.int32), a, np.full(3, 9, np.int32),
            np.ones(3, np.int32), None, None, None, 1.0, 1.0, 1.0, 0, 1.0, seed, True)


def _sweep(call, limit: int = 2000) -> int:
    """Runs call() with its n-th C allocation failing, for n = 1, 2, ... until a run reaches
    no n-th allocation; each run either succeeds or raises MemoryError. Returns how many
    allocations a whole run makes."""
    for n in range(1, limit):
        _C._fail_allocation_after(n)
        try:
            call()
            failed = None
        except MemoryError as e:
            failed = e
        finally:
            counted = _C._fail_allocation_after(0)
        if counted < n:  # the run made fewer than n allocations: every one has failed once
            assert failed is None
            return counted
        assert failed is not None, f"allocation {n} failed, yet the call reported success"
        assert "out of memory" in str(failed)
    raise AssertionError(f"more than {limit} allocations")


@needs_fault_hook
def test_a_failed_full_finetune_step_leaves_the_gradients_as_they_were(stories_dir):
    """The token losses added the LM head's gradient (full fine-tuning) before the backward
    pass allocated its memory, so running out there left part of a step in the gradients and a
    retry counted it twice. The backward's memory is now allocated first."""
    m = magnet.Model.from_pretrained(stories_dir)
    trainer = _C.Trainer(m._c, {"mask_token_id": 0, "full_finetune": 1, "lora_dropout": 0.0,
                                "resid_dropout": 0.0})
    batch = _batch()
    trainer.micro_step(*batch)
    once = trainer.grad_dict()
    trainer.zero_grad()

    def step() -> None:
        try:
            trainer.micro_step(*batch)
        except MemoryError:
            leftover = max(float(np.abs(g).max()) for g in trainer.grad_dict().values())
            assert leftover == 0.0, f"a failed step left gradients up to {leftover}"
            raise
        trainer.zero_grad()

    assert _sweep(step) > 5
    trainer.micro_step(*batch)
    for name, g in trainer.grad_dict().items():
        np.testing.assert_array_equal(g, once[name], err_msg=name)


@needs_fault_hook
def test_inference_and_lora_training_survive_any_failed_allocation(stories_dir):
    """Each entry point, failing at each of its C allocations in turn: a MemoryError, and then
    the same results as a run that never failed."""
    m = magnet.Model.from_pretrained(stories_dir)
    text = ["Once upon a time there was a little dog."]
    ids = m.tokenizer.encode(text[0])
    want = {"embed": m.embed(text), "tokens": m.embed(text, level="token")[0],
            "logits": m.logits(ids), "generate": m.generate(text, max_new_tokens=6)}
    calls = {"embed": lambda: m.embed(text), "tokens": lambda: m.embed(text, level="token")[0],
             "logits": lambda: m.logits(ids),
             "generate": lambda: m.generate(text, max_new_tokens=6)}
    for name, call in calls.items():
        assert _sweep(call) > 0, name
        got = call()
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, want[name], err_msg=name)
        else:
            assert got == want[name], name

    m._c.attach_lora(4, 8.0, ALL_TARGETS, 1)
    trainer = _C.Trainer(m._c, {"mask_token_id": 0, "lora_dropout": 0.0, "resid_dropout": 0.0})
    batch = _batch(1)
    losses = trainer.micro_step(*batch)
    trainer.zero_grad()

    def lora_step() -> None:
        try:
            assert trainer.micro_step(*batch) == losses
        finally:
            trainer.zero_grad()

    assert _sweep(lora_step) > 5
    assert _sweep(lambda: _C.Trainer(m._c, {"mask_token_id": 0})) > 0


def _run_child(code: str) -> str:
    pytest.importorskip("_testcapi", reason="CPython's _testcapi (set_nomemory) is not installed")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600)
    tail = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"rc {done.returncode}\n{tail}"
    return done.stdout


PYTHON_SWEEP = """
import sys
import _testcapi
import numpy as np
import magnet
from magnet import _C

def sweep(call, check, limit=400):
    # the n-th Python allocation from the call's start fails; done after 20 clean runs in a row
    clean = 0
    for n in range(1, limit):
        _testcapi.set_nomemory(n, n + 1)
        try:
            call()
            error = None
        except BaseException as e:
            error = e
        finally:
            _testcapi.remove_mem_hooks()
        if error is not None and not isinstance(error, MemoryError):
            print(f"allocation {n}: {type(error).__name__}: {error}")
            sys.exit(1)
        check(error is None)
        clean = clean + 1 if error is None else 0
        if clean == 20:
            return n
    print("no end"); sys.exit(1)
"""


def test_a_failed_python_allocation_in_a_state_load_is_a_memory_error(stories_dir):
    """The bindings looked keys up with PyDict_GetItemString, which hides a failed allocation:
    a second lookup returned NULL and was used as an array (a segfault), others read as
    'missing parameter' (ValueError). A failed load now raises MemoryError and leaves the
    parameters wholly as they were."""
    out = _run_child(PYTHON_SWEEP + f"""
m = magnet.Model.from_pretrained({str(stories_dir)!r})
def sweep_load(read, load):
    # loads arrays other than the current ones: after each failure, all or nothing was loaded
    before = read()
    other = {{k: v + np.float32(1) for k, v in before.items()}}
    def check(loaded):
        now, expect = read(), other if loaded else before
        assert all(np.array_equal(now[k], expect[k]) for k in now), "a load half done"
        load(before)
    return sweep(lambda: load(other), check)
print("state_dict", sweep_load(m._c.state_dict, m._c.load_state_dict))
m._c.attach_lora(4, 8.0, 127, 3)
print("lora", sweep_load(m._c.lora_state_dict, m._c.load_lora_state_dict))

trainer = _C.Trainer(m._c, {{"mask_token_id": 3}})
state = trainer.state()
moved = dict(state, step=7, m=state["m"] + np.float32(1))
def check_trainer(loaded):
    now = trainer.state()
    assert now["step"] == (7 if loaded else 0)
    assert np.array_equal(now["m"], moved["m"] if loaded else state["m"])
    trainer.load_state(state)
print("trainer", sweep(lambda: trainer.load_state(moved), check_trainer))
""")
    assert "state_dict" in out and "lora" in out and "trainer" in out


def test_a_failed_python_allocation_never_drops_a_setting(stories_dir):
    """A failed key lookup in a settings dict read as 'absent': a Trainer was built with the
    default learning rate instead of the one asked for, or without full fine-tuning."""
    out = _run_child(PYTHON_SWEEP + f"""
m = magnet.Model.from_pretrained({str(stories_dir)!r})
config = dict(mask_token_id=3, lr=0.5, warmup_steps=0, total_steps=10, full_finetune=1)
built = []
def build():
    built.append(_C.Trainer(m._c, config))
def check(ok):
    if ok:
        t = built.pop()
        assert t.lr(0) == _C.Trainer(m._c, config).lr(0) and abs(t.lr(0) - 0.5) < 1e-6
        assert "tok_embeddings" in t.grad_dict(), "full fine-tuning dropped"
print("config", sweep(build, check))
""")
    assert "config" in out


def test_a_failed_python_allocation_in_a_generator_or_embed_is_a_memory_error(stories_dir):
    """The array conversion of a Generator's and embed's inputs turned every failure into
    'tokens must be a 2-D integer array' (TypeError), running out of memory included."""
    out = _run_child(PYTHON_SWEEP + f"""
m = magnet.Model.from_pretrained({str(stories_dir)!r})
B = 2
tok, seg = np.full((B, 4), 7, np.int32), np.zeros((B, 4), np.int32)
roles, pos = np.ones((B, 4), np.uint8), np.tile(np.arange(4, dtype=np.int32), (B, 1))
def session():
    g = _C.Generator(m._c, B, 16, do_sample=True, top_k=5, seed=3, eos_id=[1, 2])
    g.append(tok, roles, seg, pos)
    g.decode_step()
    g.logprob(np.array([3, 4], np.int32))
    g.span_step(np.array([5, 6], np.int32))
    return g.finished, g.length
def embed():
    return _C.embed(m._c, tok, seg, np.zeros(B, np.int32), np.full(B, 4, np.int32), 1, True)
want = embed()
print("generator", sweep(session, lambda ok: None))
print("embed", sweep(embed, lambda ok: None if not ok else np.testing.assert_array_equal(
    embed(), want)))
""")
    assert "generator" in out and "embed" in out


class _TrainerWatch:
    """Stands in for magnet._C in magnet.adapt, noting when adapt()'s trainer is ready (made,
    and its checkpoint state loaded when resuming): up to then a failure must undo everything."""

    def __init__(self, resume: bool) -> None:
        self.resume, self.ready = resume, False

    def __getattr__(self, name: str):
        return getattr(_C, name)

    def Trainer(self, *args, **kwargs):  # noqa: N802 - the name adapt() calls
        trainer, watch = _C.Trainer(*args, **kwargs), self
        if not self.resume:
            self.ready = True
            return trainer

        class Loading:
            def __getattr__(self, name: str):
                return getattr(trainer, name)

            def load_state(self, state):
                trainer.load_state(state)
                watch.ready = True

        return Loading()


@needs_fault_hook
@pytest.mark.parametrize("resume", [False, True])
def test_adapt_that_runs_out_of_memory_before_training_leaves_the_model(
        stories_dir, texts, tmp_path, monkeypatch, resume):
    """adapt() attached (or, resuming, replaced) the adapters and then built its trainer; when
    that ran out of memory, the model kept the new adapters, and a resume had thrown away the
    user's own (the rollback caught ValueError and TypeError only)."""
    import magnet.adapt

    kw = dict(steps=2, batch_size=2, seq_len=32, progress=False, lora_rank=2,
              checkpoint_every=1, checkpoint_dir=tmp_path)
    if resume:  # a rank-2 checkpoint at step 1 of 2
        class Stop(Exception):
            pass

        def stop(record: dict) -> None:
            raise Stop

        with pytest.raises(Stop):
            magnet.Model.from_pretrained(stories_dir).adapt(texts[:200], callback=stop, **kw)
    undone = 0
    for n in range(1, 500):
        m = magnet.Model.from_pretrained(stories_dir)
        if resume:  # the user's own adapters, of another rank, with values of their own
            m._c.attach_lora(4, 8.0, ALL_TARGETS, 7)
            mine = {k: v + np.float32(0.5) for k, v in m._c.lora_state_dict().items()}
            m._c.load_lora_state_dict(mine)
        before = (m._c.lora_info(), m._c.lora_state_dict() if resume else None)
        weights = m._c.state_dict()
        watch = _TrainerWatch(resume)
        monkeypatch.setattr(magnet.adapt, "_C", watch)
        _C._fail_allocation_after(n)
        try:
            m.adapt(texts[:200], resume=resume, **kw)
            failed = False
        except MemoryError:
            failed = True
        finally:
            counted = _C._fail_allocation_after(0)
            monkeypatch.setattr(magnet.adapt, "_C", _C)
        if not failed:
            assert counted < n
            assert undone > 2  # attaching, the trainer (and its state) each failed
            return
        if watch.ready:
            continue  # the failure came later: adapt() trains in place
        undone += 1
        assert m._c.lora_info() == before[0], f"allocation {n}: adapters changed"
        if resume:
            now = m._c.lora_state_dict()
            assert all(np.array_equal(now[k], before[1][k]) for k in now), n
        now = m._c.state_dict()
        assert all(np.array_equal(now[k], weights[k]) for k in now), n
    raise AssertionError("adapt() never got through")
