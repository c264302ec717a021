"""Every input an atheris harness of tests/fuzz/ found crashing (tests/fuzz/crashers/<harness>/,
named after what it found) and every seed (tests/fuzz/corpus/<harness>/) goes once through its
harness's ``test_one_input``: bad input must give an allowed error, never a crash or another
exception. Runs in the normal test suite (atheris is not needed) and under tests/sanitize.sh."""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
HARNESSES = sorted(p.stem[len("fuzz_"):] for p in HERE.glob("fuzz_*.py"))


@functools.cache
def _load(name: str) -> types.ModuleType:
    if "atheris" not in sys.modules and importlib.util.find_spec("atheris") is None:
        sys.modules["atheris"] = _fake_atheris()
    sys.path.insert(0, str(HERE))
    try:
        spec = importlib.util.spec_from_file_location(f"magnet_fuzz_{name}",
                                                      HERE / f"fuzz_{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(HERE))
    return mod


def _fake_atheris() -> types.ModuleType:
    """Enough of atheris (FuzzedDataProvider) to replay inputs without it installed."""
    mod = types.ModuleType("atheris")

    class FuzzedDataProvider:
        def __init__(self, data: bytes) -> None:
            self.data = memoryview(data)

        def ConsumeIntInRange(self, lo: int, hi: int) -> int:  # noqa: N802 - atheris' name
            span = hi - lo
            if span <= 0:
                return lo
            nbytes = (span.bit_length() + 7) // 8
            raw, self.data = bytes(self.data[-nbytes:]) if nbytes <= len(self.data) else bytes(
                self.data), self.data[:-nbytes] if nbytes <= len(self.data) else self.data[:0]
            return lo + int.from_bytes(raw, "little") % (span + 1)

        def ConsumeBool(self) -> bool:  # noqa: N802
            return bool(self.ConsumeIntInRange(0, 1))

    mod.FuzzedDataProvider = FuzzedDataProvider
    mod.instrument_func = lambda f: f
    return mod


CASES = [(h, p) for h in HARNESSES for kind in ("crashers", "corpus")
         for p in sorted((HERE / kind / h).glob("*")) if p.is_file()]


@pytest.mark.parametrize("harness,path", CASES, ids=[f"{h}/{p.parent.parent.name}/{p.name}"
                                                     for h, p in CASES])
def test_replay(harness: str, path: Path) -> None:
    mod = _load(harness)
    mod.test_one_input(path.read_bytes())
