"""Temporaries that a SIGKILLed save left (``.checkpoint-*.npz`` of an adapt checkpoint,
``.<out>.tmp-*`` of save_pretrained) are removed by the next save of a later process; those of a
live process, and names that are not magnet's temporaries, are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
from pathlib import Path
import magnet, magnet.adapt, magnet.save
target, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
TEXTS = ["Once upon a time there was a little cat.", "The dog ran to the park and played."] * 4
if mode == "stall":  # the writer stops inside its temporary and waits to be killed
    def stall(f, *args, **kwargs):
        (f.write(b"partial") if hasattr(f, "write") else Path(f).write_bytes(b"partial"))
        ready.touch()
        time.sleep(600)
    magnet.adapt.np.savez = stall
    magnet.save.write_safetensors = stall
m = magnet.Model.from_pretrained("stories260K")
if target.name == "ck":
    m.adapt(TEXTS, steps=1, batch_size=2, seq_len=16, lora_rank=2, checkpoint_dir=target,
            progress=False)
else:
    m.save_pretrained(target)
"""


def _child(tmp: Path, target: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    script = tmp / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    ready = tmp / f"ready-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), str(target), str(ready), mode],
                            env=env, stderr=subprocess.PIPE), ready


def _stalled(tmp: Path, target: Path) -> subprocess.Popen:
    proc, ready = _child(tmp, target, "stall")
    end = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < end, "the child never reached its temporary"
        time.sleep(0.02)
    return proc


def _save(tmp: Path, target: Path) -> None:
    proc, _ = _child(tmp, target, "save")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path):
    for target in (tmp_path / "ck", tmp_path / "out" / "model"):
        where = target if target.name == "ck" else target.parent
        where.mkdir(parents=True)
        # not magnet's pattern of host and process: the user's, or an older magnet's
        foreign = [".checkpoint-abc123.npz", ".model.tmp-abc123"]
        for name in foreign:
            (where / name).write_text("keep")
        live = _stalled(tmp_path, target)
        try:
            (left,) = set(_temps(where)) - set(foreign)
            _save(tmp_path, target)  # the stalled process is alive: its temporary stays
            assert left in _temps(where)
        finally:
            _kill(live)
        _save(tmp_path, target)  # a later process, the writer gone: removed
        assert _temps(where) == sorted(foreign)
        assert (target / ("checkpoint.npz" if target.name == "ck" else "config.json")).is_file()
