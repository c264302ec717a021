"""The thread count as pipelines use it: one count for the whole process (whichever thread set
it), OMP_NUM_THREADS and the CPU affinity as the default, and forked workers (multiprocessing's
default start method on Linux, DataLoader workers) that run instead of hanging."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import magnet

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, env: dict[str, str] | None = None, timeout: int = 120
         ) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter and process group: a hang fails the test at the timeout,
    and its forked workers go with it."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {timeout} s)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_count_is_one_for_the_whole_process():
    """set_num_threads applied to the calling thread only: a ThreadPoolExecutor worker (or any
    other thread) still ran, and reported, the import-time count."""
    before = magnet.get_num_threads()
    try:
        magnet.set_num_threads(1)
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(magnet.get_num_threads()))
        t.start()
        t.join()
        assert seen == [1]
    finally:
        magnet.set_num_threads(before)


def test_calls_from_other_threads_use_the_count():
    """A count set in one thread governs the teams of calls made from another thread, and the
    results do not depend on it."""
    r = _run("""
import threading, time, numpy as np, magnet
m = magnet.Model.from_pretrained("stories260K")
texts = ["Once upon a time there was a little girl named Lily. " * 8] * 64
magnet.set_num_threads(2)
ref = m.embed(texts)
magnet.set_num_threads(1)
out = {}
t = threading.Thread(target=lambda: out.setdefault("e", m.embed(texts)))
t.start(); t.join()
assert np.allclose(out["e"], ref, atol=1e-5), np.abs(out["e"] - ref).max()
print("ok")
""")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="taskset and fork: Linux")
def test_the_default_follows_omp_num_threads_and_the_affinity():
    code = "import magnet; print(magnet.get_num_threads())"
    assert _run(code, env={"OMP_NUM_THREADS": "1"}).stdout.strip() == "1"
    assert _run(code, env={"OMP_NUM_THREADS": "1,1"}).stdout.strip() == "1"
    # libgomp reads a value with white space around it (a shell's trailing newline, say)
    for value in (" 1", "1 ", "1\n", "1\t", " 1 , 2"):
        assert _run(code, env={"OMP_NUM_THREADS": value}).stdout.strip() == "1", repr(value)
    if len(os.sched_getaffinity(0)) >= 2 and subprocess.run(["which", "taskset"],
                                                            capture_output=True).returncode == 0:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        r = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert r.stdout.strip() == "1", r.stderr


_FORK_WORK = """
import multiprocessing as mp, os, numpy as np, magnet
magnet.set_num_threads(2)
m = magnet.Model.from_pretrained("stories260K")
texts = ["Once upon a time there was a little girl named Lily. " * 5 + str(i) for i in range(32)]
ref = m.embed(texts)  # the parent has used its thread pool
greedy = m.generate("Once upon a time", max_new_tokens=8)

def work(chunk):
    return m.embed(chunk), m.generate("Once upon a time", max_new_tokens=8), \\
        magnet.get_num_threads()

with mp.get_context("fork").Pool(2) as pool:
    parts = pool.map(work, [texts[:16], texts[16:]])
got = np.concatenate([p[0] for p in parts])
assert np.allclose(got, ref, atol=1e-5), np.abs(got - ref).max()
assert all(p[1] == greedy for p in parts) and all(p[2] == 1 for p in parts)
pid = os.fork()
if pid == 0:
    try:
        magnet.set_num_threads(2)
        os._exit(3)
    except ValueError as e:
        os._exit(0 if "spawn" in str(e) else 4)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")
def test_forked_workers_run_after_the_parent_used_its_threads():
    """A forked child hung in OpenMP's team (its workers stayed in the parent) as soon as the
    parent had run one call; children now run one thread, with the parent's results, and a
    request for more says why it cannot be."""
    r = _run(_FORK_WORK, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode,
                                                                   r.stderr[-2000:])


def test_embed_results_do_not_depend_on_the_thread_count():
    m = magnet.Model.from_pretrained("stories260K")
    texts = ["a little dog ran to the park", "the sun was warm"] * 8
    before = magnet.get_num_threads()
    try:
        magnet.set_num_threads(1)
        a = m.embed(texts)
        magnet.set_num_threads(2)
        b = m.embed(texts)
    finally:
        magnet.set_num_threads(before)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")
def test_children_of_a_parent_that_only_imported_keep_the_whole_count():
    """A parent that imports magnet and leaves the work to forked workers (each loading its own
    model) has started no OpenMP workers: the children keep the count and may change it."""
    r = _run("""
import multiprocessing as mp, magnet
magnet.set_num_threads(2)

def work(_):
    magnet.set_num_threads(2)
    m = magnet.Model.from_pretrained("stories260K")
    return magnet.get_num_threads(), m.generate("Once upon a time", max_new_tokens=6)

with mp.get_context("fork").Pool(2) as pool:
    got = pool.map(work, range(2))
assert [g[0] for g in got] == [2, 2] and got[0][1] == got[1][1], got
print("ok")
""", timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode,
                                                                   r.stderr[-2000:])



_FORK_DURING_A_CALL = """
import os, signal, threading, time, numpy as np, magnet
m = magnet.Model.from_pretrained("stories260K")
ids = np.tile(np.arange(1, 257, dtype=np.int32), (8, 1))
ref = m.logits(ids[:1, :16])
stop = threading.Event()

def busy():
    while not stop.is_set():
        m.logits(ids)  # inside OpenBLAS and the model's lock most of the time

t = threading.Thread(target=busy)
t.start()
codes = []
for _ in range(20):
    time.sleep(0.03)
    pid = os.fork()
    if pid == 0:  # the child: one thread, which the busy thread is not
        signal.alarm(20)
        m.merge_lora()  # needs the model's lock alone
        out = m.logits(ids[:1, :16])  # needs OpenBLAS
        os._exit(0 if np.allclose(out, ref, atol=1e-5) else 3)
    _, status = os.waitpid(pid, 0)
    codes.append(os.waitstatus_to_exitcode(status))
    if codes[-1] != 0:
        break
stop.set()
t.join()
assert codes == [0] * 20, codes
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")
def test_a_child_forked_during_another_threads_call_runs():
    """Forked while a thread of the parent was inside a call, the child inherited locks held by
    a thread it does not have (OpenBLAS's server lock, the model's lock) and its next call hung
    (SIGALRM after 20 s: -14). A fork now waits until no thread is inside a call."""
    r = _run(_FORK_DURING_A_CALL, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stdout,
                                                                   r.stderr[-2000:])


_NO_TORCH = importlib.util.find_spec("torch") is None


@pytest.mark.skipif(_NO_TORCH, reason="needs PyTorch (the test extra has it)")
def test_a_call_gives_the_thread_its_own_openmp_setting_back():
    """PyTorch and threadpoolctl keep their thread count in the calling thread's libgomp
    setting, the one magnet sets for its calls: after one embed, torch.set_num_threads(1) read
    2 again, in every DataLoader worker too. Calls now put it back when they leave, and
    set_num_threads and the import leave it alone."""
    r = _run("""
import torch
torch.set_num_threads(1)
import magnet
magnet.set_num_threads(2)
m = magnet.Model.from_pretrained("stories260K")
m.embed(["Once upon a time there was a little girl named Lily."] * 8)
m.generate("Once upon a time", max_new_tokens=4)
after_calls = torch.get_num_threads()
torch.set_num_threads(2)
magnet.set_num_threads(1)
m.embed(["a dog"])
print(after_calls, torch.get_num_threads(), magnet.get_num_threads())
""")
    assert r.returncode == 0 and r.stdout.split() == ["1", "2", "1"], (r.stdout,
                                                                       r.stderr[-2000:])


_FORK_AFTER_TORCH = """
import os, signal, numpy as np, torch
torch.set_num_threads(2)
float(torch.randn(4_000_000).mul(2).sum())  # starts libgomp's workers in the parent
import magnet
magnet.set_num_threads(2)
texts = ["Once upon a time there was a little girl named Lily. " * 5 + str(i) for i in range(16)]
pid = os.fork()
if pid == 0:  # the parent never ran a magnet call
    signal.alarm(60)
    m = magnet.Model.from_pretrained("stories260K")
    out = m.embed(texts)
    os._exit(0 if magnet.get_num_threads() == 1 and np.isfinite(out).all() else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")
@pytest.mark.skipif(_NO_TORCH, reason="needs PyTorch (the test extra has it)")
def test_a_child_forked_after_another_librarys_openmp_work_runs():
    """torch ships a libgomp that serves magnet too once loaded; a parent that ran one torch op
    (its workers started) and no magnet call forked a child whose first magnet call waited
    forever for those workers (SIGALRM: -14). Any other thread at the fork now puts the child
    on one thread."""
    r = _run(_FORK_AFTER_TORCH, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "0", (r.stdout, r.stderr[-2000:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")
def test_a_child_forked_beside_another_thread_runs_one_thread():
    """What the child cannot tell apart from another library's OpenMP workers: a parent with
    any other thread at the fork. Its children run one thread; without one, they keep the
    count (test_children_of_a_parent_that_only_imported_keep_the_whole_count)."""
    r = _run("""
import os, threading, magnet
magnet.set_num_threads(2)
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
pid = os.fork()
if pid == 0:
    os._exit(10 + magnet.get_num_threads())
stop.set()
t.join()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
""")
    assert r.returncode == 0 and r.stdout.strip() == "11", (r.stdout, r.stderr[-2000:])
