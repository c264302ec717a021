"""Where a model runs: the CPU (always) or an NVIDIA GPU through the CUDA backend.

Device strings follow PyTorch: ``"cpu"``, ``"cuda"`` (GPU 0) and ``"cuda:N"``. On a GPU the
matrix products run in ``precision="bf16"`` (bfloat16 inputs, float32 accumulation; the
default there) or ``"fp32"`` (float32 throughout, for parity with the CPU); everything else is
float32. The CPU computes in float32 only.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
from typing import Any

from magnet import _C

PRECISIONS = {"fp32": 0, "bf16": 1}


def cuda_device_count() -> int:
    """GPUs the CUDA backend can use (0 without a CUDA build, a driver or a device)."""
    return _C.cuda_device_count()[0]


def cuda_is_available() -> bool:
    """Whether ``device="cuda"`` can be used on this machine."""
    return cuda_device_count() > 0


def cuda_unavailable_reason() -> str:
    """Why ``cuda_is_available()`` is False (empty when it is True)."""
    count, why = _C.cuda_device_count()
    return "" if count else why


def parse_device(device: Any) -> tuple[str, int]:
    """``"cpu"`` (or ``"cpu:0"``) -> ("cpu", 0); ``"cuda"`` / ``"cuda:N"`` -> ("cuda", N), as
    PyTorch spells them; a ``torch.device`` is read through its string."""
    if not isinstance(device, str) and isinstance(getattr(device, "type", None), str):
        device = str(device)  # a torch.device, without importing torch
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got "
                        f"{type(device).__name__}")
    kind, colon, index = device.strip().lower().partition(":")
    if kind == "cpu" and index in ("", "0") and (index or not colon):
        return "cpu", 0
    if kind == "cuda":
        if not colon:
            return "cuda", 0
        if index.isascii() and index.isdigit():  # not "²" or other Unicode digits
            if int(index) >= 2**31:
                raise ValueError(f"device {device!r}: no CUDA device has index {index}")
            return "cuda", int(index)
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def parse_precision(kind: str, precision: str | None) -> int:
    """The C precision code for a device; None picks bf16 on a GPU and fp32 on the CPU. Case and
    surrounding spaces do not matter, as for devices."""
    if precision is None:
        precision = "bf16" if kind == "cuda" else "fp32"
    name = precision.strip().lower() if isinstance(precision, str) else None
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected 'fp32' or 'bf16'")
    if kind == "cpu" and name != "fp32":
        raise ValueError("the CPU computes in float32 only: use precision='fp32' (or leave it "
                         "unset) with device='cpu'")
    return PRECISIONS[name]


def point_to_cublas() -> None:
    """Let the CUDA backend find cuBLAS inside the ``nvidia-cublas`` wheel (as PyTorch installs
    it) when the system has none on its library path: sets ``MAGNET_CUBLAS_PATH`` to the
    wheel's library folder, unless the variable is already set or no such folder exists."""
    if os.environ.get("MAGNET_CUBLAS_PATH") or ctypes.util.find_library("cublas"):
        return
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        for lib in ("cublas/lib", "cu13/lib", "cu12/lib"):
            folder = os.path.join(root, lib)
            if glob.glob(os.path.join(folder, "libcublas.so*")):
                os.environ["MAGNET_CUBLAS_PATH"] = folder
                return
