"""Crash safety: a process SIGKILLed while writing a training checkpoint (``adapt`` with
``checkpoint_dir``) or while ``save_pretrained`` runs leaves the previous checkpoint / model
directory whole and loadable.

Each case runs a child process: once with the writer patched to stop halfway through the file
(the parent kills it exactly there), and a few times killed at random moments of a save loop."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet.adapt import _load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Once upon a time there was a little cat.", "The dog ran to the park and played.",
         "Lily saw a big red ball in the garden."] * 4

CHILD_PRELUDE = """
import os, sys, time
from pathlib import Path
import numpy as np
import magnet
magnet.set_num_threads(1)
ready = Path(sys.argv[1])
target = Path(sys.argv[2])
mode = sys.argv[3]
TEXTS = {texts!r}

def stall_halfway(real_write):
    '''A writer that writes half of its output, tells the parent, and waits to be killed.'''
    def write(*args, **kwargs):
        real_write(*args, **kwargs)
        f = args[0]
        if hasattr(f, "write"):
            f.flush()
            f.truncate(max(1, f.tell() // 2))
        else:
            p = Path(f)
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        ready.with_suffix(".half").touch()
        time.sleep(600)
    return write
"""


def run_child(body: str, tmp: Path, target: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    ready = tmp / f"ready-{mode}"
    for p in (ready, ready.with_suffix(".half")):
        if p.exists():
            p.unlink()
    script = tmp / "child.py"
    script.write_text(CHILD_PRELUDE.format(texts=TEXTS) + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(script), str(ready), str(target), mode],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, ready


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"child never reached {path.name}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


ADAPT_CHILD = """
model = magnet.Model.from_pretrained("stories260K")
kw = dict(steps=100000, batch_size=2, seq_len=16, lora_rank=2, checkpoint_dir=target,
          checkpoint_every=1, progress=False)
if mode == "halfway":
    import magnet.adapt
    real = np.savez
    calls = []
    def savez(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint stops halfway
            return stall_halfway(real)(*a, **k)
        return real(*a, **k)
    magnet.adapt.np.savez = savez
model.adapt(TEXTS, callback=lambda r: ready.touch() if r["step"] >= 1 else None, **kw)
"""


def check_checkpoint(directory: Path, min_step: int) -> int:
    state, meta = _load_checkpoint(directory)
    assert meta["step"] >= min_step and state["params"].size > 0
    model = magnet.Model.from_pretrained("stories260K")
    r = model.adapt(TEXTS, steps=meta["step"] + 1, batch_size=2, seq_len=16, lora_rank=2,
                    checkpoint_dir=directory, resume=True, progress=False)
    assert r.history[-1]["step"] == meta["step"]
    assert np.isfinite(r.history[-1]["loss"])
    return meta["step"]


def test_checkpoint_killed_halfway(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    proc, ready = run_child(ADAPT_CHILD, tmp_path, ckpt, "halfway")
    wait_for(ready.with_suffix(".half"), proc)
    kill(proc)
    # the half-written file is a temporary; checkpoint.npz is still the first, whole one
    assert check_checkpoint(ckpt, 1) == 1


def test_checkpoint_killed_at_random_times(tmp_path: Path) -> None:
    rand = random.Random(5)
    ckpt = tmp_path / "ckpt"
    for i in range(3):
        proc, ready = run_child(ADAPT_CHILD, tmp_path, ckpt, f"random{i}")
        wait_for(ready, proc)
        time.sleep(rand.uniform(0.0, 0.5))
        kill(proc)
        check_checkpoint(ckpt, 1)


SAVE_CHILD = """
import magnet.save
model = magnet.Model.from_pretrained("stories260K")
if mode == "halfway":
    magnet.save.write_safetensors = stall_halfway(magnet.save.write_safetensors)
state = model.state_dict()
k = 0
while True:  # alternate two versions of the weights: the directory must hold one of them
    k += 1
    model._c.load_state_dict({n: v * (1.0 + 0.01 * (k % 2)) for n, v in state.items()})
    model.save_pretrained(target)
    ready.touch()
"""


def saved_versions() -> list[np.ndarray]:
    model = magnet.Model.from_pretrained("stories260K")
    state = model.state_dict()
    ids = np.arange(8)
    outs = []
    for scale in (1.0, 1.01):
        model._c.load_state_dict({n: v * np.float32(scale) for n, v in state.items()})
        outs.append(model.logits(ids))
    return outs


def check_model_dir(directory: Path, versions: list[np.ndarray]) -> None:
    m = magnet.Model.from_pretrained(directory)
    out = m.logits(np.arange(8))
    assert any(np.allclose(out, v, atol=1e-4) for v in versions)
    assert m.tokenizer is not None


def test_save_pretrained_killed_halfway(tmp_path: Path) -> None:
    out = tmp_path / "model"
    first = magnet.Model.from_pretrained("stories260K")
    first.save_pretrained(out)
    before = first.logits(np.arange(8))
    proc, ready = run_child(SAVE_CHILD, tmp_path, out, "halfway")
    wait_for(ready.with_suffix(".half"), proc)
    kill(proc)
    check_model_dir(out, [before])


def test_save_pretrained_killed_at_random_times(tmp_path: Path) -> None:
    out = tmp_path / "model"
    versions = saved_versions()
    rand = random.Random(3)
    for i in range(4):
        proc, ready = run_child(SAVE_CHILD, tmp_path, out, f"random{i}")
        wait_for(ready, proc)
        time.sleep(rand.uniform(0.0, 0.3))
        kill(proc)
        check_model_dir(out, versions)
    # what a killed writer can leave behind is hidden temporaries beside the directory
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model")]
    assert all(".tmp-" in n or ".old-" in n for n in leftovers)


def test_two_saves_into_one_directory_keep_the_users_files(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One save carried the user's files over while another swapped the directory out and
    deleted it: the first published a copy missing the files it had not reached, with no error.
    Here the first save pauses in the middle of its carry-over while the second runs."""
    import threading

    import magnet.save as save_module

    out = tmp_path / "model"
    m = magnet.Model.from_pretrained("stories260K")
    m.save_pretrained(out)
    # more than one read of the directory's entries (os.scandir reads them in blocks of 32 KB)
    for i in range(5000):
        (out / f"note-{i:04d}.txt").write_text(str(i))
    real, first = save_module._link_or_copy, threading.current_thread()
    calls, paused, second_done = [0], threading.Event(), threading.Event()

    def link_or_copy(src, dst):
        if threading.current_thread() is first:
            calls[0] += 1
            if calls[0] == 50:  # halfway: let the other save run (at most 1 s)
                paused.set()
                second_done.wait(1.0)
        real(src, dst)

    monkeypatch.setattr(save_module, "_link_or_copy", link_or_copy)

    def second() -> None:
        paused.wait(30)
        m.save_pretrained(out)
        second_done.set()

    other = threading.Thread(target=second)
    other.start()
    m.save_pretrained(out)
    other.join(60)
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("note-"))
    assert len(kept) == 5000, f"{5000 - len(kept)} of the user's files were lost"
    check_model_dir(out, [m.logits(np.arange(8))])


@pytest.fixture(autouse=True)
def one_thread():
    before = magnet.get_num_threads()
    magnet.set_num_threads(1)
    yield
    magnet.set_num_threads(before)
