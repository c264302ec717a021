"""magnet: one decoder that embeds, infills and generates (MAGNET, Khosla et al., ACL 2025)."""

import numbers
import os

import numpy as np

# OpenBLAS comes from the scipy-openblas32 wheel; importing it loads the shared library so the
# extension's OpenBLAS symbols resolve whichever environment built it.
import scipy_openblas32 as _scipy_openblas32  # noqa: F401

# A libgomp loaded before magnet's (PyTorch ships one, which then serves magnet too) may have
# started OpenMP workers already, which a fork child cannot use: then the threads seen at import
# do not tell whether a fork leaves workers behind (see _forget_threads_at_import below). An
# unreadable map counts as such a libgomp.
try:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as _maps:
        _LIBGOMP_BEFORE_IMPORT = any("libgomp" in line for line in _maps)
except OSError:
    _LIBGOMP_BEFORE_IMPORT = True

try:
    from magnet import _C
except ImportError as _e:  # the source tree shadows an installed copy, or the build is missing
    if "undefined symbol" in str(_e) and "openblas" in str(_e):
        from importlib.metadata import version as _dist_version

        raise ImportError(
            f"the OpenBLAS of scipy-openblas32 {_dist_version('scipy-openblas32')} lacks a "
            f"function magnet was built with; upgrade it: "
            f"pip install -U 'scipy-openblas32>=0.3.30.443'. Cause: {_e}"
        ) from None
    raise ImportError(
        f"magnet's C extension is not built next to {__file__}. From a source checkout, "
        f"install it in place with `pip install -e .` (or run Python outside the checkout so "
        f"that an installed copy is imported). Cause: {_e}"
    ) from None
from magnet.config import ModelConfig
from magnet.device import cuda_device_count, cuda_is_available
from magnet.embedding import TokenEmbeddings
from magnet.model import Model
from magnet.results import AdaptResult, InfillResult
from magnet.tokenizer import Tokenizer

CONTEXT = 0
SPAN = 1


def _version() -> str:
    """The installed distribution's version (the distribution is "magnet-lm", not "magnet");
    a source tree built in place without metadata reads its pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("magnet-lm")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"),
                              re.MULTILINE)
        except OSError:
            found = None
        return found.group(1) if found else "0+unknown"


__version__ = _version()

# os.fork (multiprocessing's "fork" workers, DataLoader workers) waits until no other thread is
# inside a magnet call: a call cut off by the fork would leave the child its locks (OpenBLAS's,
# a model's) held by a thread the child does not have, and the child's next call would hang.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_C._fork_prepare, after_in_parent=_C._fork_parent)
# A forked child runs magnet on one thread when OpenMP's workers may have started in the parent
# (they stay there, and a larger team would wait for them forever): magnet's calls start them,
# and so may any thread that appeared since import, or before it when another libgomp was there.
if _LIBGOMP_BEFORE_IMPORT:
    _C._forget_threads_at_import()


def set_num_threads(n: int) -> None:
    """Set the worker threads used by magnet's C core (OpenMP loops and OpenBLAS).

    One count for the whole process: calls from every Python thread use it (a call already
    running keeps the count it started with). It is capped at ``OMP_THREAD_LIMIT`` when that is
    set (``get_num_threads`` reports the count in use). The calling thread's own OpenMP setting
    (``torch.set_num_threads``, threadpoolctl) is left as it was. In a process forked
    (multiprocessing's "fork" start method, DataLoader workers) from one whose OpenMP workers
    may have started (it ran magnet calls with several threads, started a thread since
    importing magnet, say a PyTorch op's workers, or imported PyTorch first), magnet runs one
    thread, because OpenMP's workers do not survive a fork; asking for more there raises
    ValueError (start such workers with the "spawn" method, or fork them before the parent
    starts any parallel work)."""
    if not isinstance(n, numbers.Integral) or isinstance(n, (bool, np.bool_)):
        raise TypeError(f"num_threads must be an int, got {type(n).__name__}")
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """The worker threads in use. The default: ``OMP_NUM_THREADS`` when it is set, else the
    CPUs this process may run on (its affinity, as ``taskset`` or a container's cpuset limits
    it); 1 in a child forked after the parent's calls used several threads."""
    return _C.get_num_threads()


__all__ = [
    "CONTEXT",
    "SPAN",
    "AdaptResult",
    "InfillResult",
    "Model",
    "ModelConfig",
    "TokenEmbeddings",
    "Tokenizer",
    "cuda_device_count",
    "cuda_is_available",
    "get_num_threads",
    "set_num_threads",
]
