"""magnet demo: its arguments are checked before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from magnet.demo import run_demo


@pytest.mark.parametrize(("args", "says"), [
    (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["--steps", "-1"], "argument --steps: must be an integer >= 1, got -1"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2**64), got -1"),
    (["--seed", str(2**64)], f"argument --seed: must be an integer in [0, 2**64), got {2**64}"),
], ids=["steps_0", "steps_negative", "seed_negative", "seed_2**64"])
def test_demo_rejects_bad_steps_and_seed_before_any_work(args, says):
    """--steps -1 and --seed -1 failed in adapt, after loading, generating and sampling the
    training text; --steps 0 printed NumPy's 'Mean of empty slice' and a nan -> nan table."""
    r = subprocess.run([sys.executable, "-m", "magnet", "demo", "--quiet", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == "" and r.stderr == f"magnet demo: error: {says}\n"


@pytest.mark.parametrize(("kw", "exc", "says"), [
    ({"steps": 0}, ValueError, "steps must be >= 1, got 0"),
    ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
    ({"seed": 2**64}, ValueError, "seed must be in"),
    ({"steps": 2.5}, TypeError, "steps must be an int"),
], ids=["steps_0", "seed_negative", "seed_2**64", "steps_float"])
def test_run_demo_checks_steps_and_seed_before_loading(kw, exc, says):
    # a model that does not exist: the check comes before the load
    with pytest.raises(exc, match=says):
        run_demo("/no/such/model", **kw)
