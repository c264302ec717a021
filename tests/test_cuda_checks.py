"""The CUDA backend's standalone check programs (tests/cuda/check_*.cu), built and run by
tests/cuda/run_checks.sh: in emulation (the CPU emulator of csrc/backend/cuda/emulate, on any
machine with g++) and, where a GPU is present, on the GPU."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_CHECKS = ROOT / "tests" / "cuda" / "run_checks.sh"


def _run(mode: str) -> None:
    proc = subprocess.run(
        ["bash", str(RUN_CHECKS), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"run_checks.sh {mode} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")


def _missing_tools(*tools: str) -> str | None:
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if importlib.util.find_spec("scipy_openblas32") is None:
        return "the scipy_openblas32 package is missing"
    return None


def _gpu_present() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def test_cuda_checks_emulated():
    why = _missing_tools("g++", "gcc", "make")
    if why:
        pytest.skip(f"cannot build the emulated CUDA checks: {why}")
    _run("emulate")


@pytest.mark.skipif(not _gpu_present(), reason="no NVIDIA GPU (nvidia-smi -L lists none)")
def test_cuda_checks_on_gpu():
    why = _missing_tools("gcc", "g++", "make")
    if why:
        pytest.skip(f"cannot build the CUDA checks: {why}")
    _run("cuda")
