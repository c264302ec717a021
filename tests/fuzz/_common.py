"""Shared pieces of the atheris harnesses in tests/fuzz/ (see tests/fuzz/README.md).

A harness feeds arbitrary bytes to one public entry point of ``magnet._C``. Raising one of
``ALLOWED`` (with a non-empty message) is the correct answer to bad input; any other exception,
an empty message, or a crash / sanitizer report is a finding.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ALLOWED = (ValueError, OSError, MemoryError, TypeError)
HERE = Path(__file__).resolve().parent


def scratch_file(suffix: str) -> Path:
    """A per-process file on a RAM disk where there is one (the readers take a path)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="magnet-fuzz-", dir=base))
    return directory / f"input{suffix}"


_SIGNATURES: dict[str, Callable[[], None]] = {}


def _feedback(outcome: str) -> None:
    """Coverage feedback without an instrumented C build: the gcc-built extension gives libFuzzer
    no edges, so each distinct outcome (result kind, or error type + message with its numbers
    and quoted parts removed) gets its own freshly instrumented Python function. An input that
    reaches a new outcome then covers new counters and is kept in the corpus."""
    sig = re.sub(r"'[^']*'|\"[^\"]*\"|0x[0-9a-f]+|\d+", "#", outcome)[:160]
    fn = _SIGNATURES.get(sig)
    if fn is None:
        if len(_SIGNATURES) >= 2000:  # atheris reserves a fixed number of counters (about 4096)
            return

        def fn() -> None:
            return None

        try:
            import atheris

            fn = atheris.instrument_func(fn)
        except ImportError:
            pass
        _SIGNATURES[sig] = fn
    fn()


def checked(fn: Callable[[], object]) -> None:
    """Run ``fn``; allowed errors must carry a message, anything else propagates (a finding)."""
    try:
        result = fn()
    except ALLOWED as e:
        if not str(e):
            raise AssertionError(f"{type(e).__name__} with an empty message") from e
        _feedback(f"{type(e).__name__}: {e}")
        return
    _feedback(f"ok {describe(result)}")


def describe(result: object) -> str:
    """A coarse shape of a successful result (container kinds, lengths, dtypes)."""
    if isinstance(result, dict):
        return "dict" + str(sorted(describe(v) for v in result.values())[:8])
    if isinstance(result, (tuple, list)):
        return f"{type(result).__name__}{len(result)}[" + ",".join(
            describe(v) for v in list(result)[:4]) + "]"
    shape = getattr(result, "shape", None)
    if shape is not None:
        return f"arr{len(shape)}{getattr(result, 'dtype', '')}"
    return type(result).__name__


def main(test_one_input: Callable[[bytes], None], name: str) -> None:
    """``python tests/fuzz/<harness>.py [libFuzzer flags] [corpus dirs]``: with no corpus
    directory given, the harness's seed corpus in tests/fuzz/corpus/<name>/ is used."""
    import atheris

    import magnet

    magnet.set_num_threads(1)
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(str(HERE / "corpus" / name))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
