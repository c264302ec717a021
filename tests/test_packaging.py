"""The source distribution: what `python -m build` packs must be enough to build and test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of the project's files to compare with")
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def _copy_of_the_tree(dest: Path) -> Path:
    for f in _tracked():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    return dest


def test_the_sdist_holds_every_source_header_test_and_doc(tmp_path):
    """The sdist held only the extension's .c files: no header, no CUDA source (the build from
    it failed at `blas.h: No such file`), and no test helper or fixture. Built from a copy
    without .git, so that a git-aware file finder (setuptools-scm) cannot fill the gaps."""
    if subprocess.run([sys.executable, "-c", "import build.__main__"], cwd=tmp_path,
                      capture_output=True).returncode != 0:
        pytest.skip("the sdist check needs the build package (pip install build)")
    files = _tracked()
    copy = _copy_of_the_tree(tmp_path / "src")
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
                          str(tmp_path / "dist"), str(copy)], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path, env={**os.environ, "MAGNET_CUDA": "0"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        packed = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = [f for f in files if f.startswith(("csrc/", "magnet/", "tests/", "docs/",
                                                "notebooks/", "benchmarks/"))
              or f in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")]
    missing = sorted(set(wanted) - packed)
    assert not missing, f"{len(missing)} files missing from the sdist, e.g. {missing[:10]}"


def test_a_build_with_other_switches_rebuilds_and_keeps_no_build_paths(tmp_path):
    """setuptools rebuilt only when a source was newer than the extension: a second build with
    MAGNET_PORTABLE=1 (or MAGNET_CUDA, MAGNET_SYSTEM_OPENBLAS, ...) silently kept the first
    binary. And the extension's runtime path named the build's own OpenBLAS folder, which pip
    deletes (a temporary build environment): a library put there later would be loaded."""
    src = _copy_of_the_tree(tmp_path / "src")

    def build(**switches: str) -> str:
        out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"],
                             cwd=src, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "MAGNET_CUDA": "0", **switches})
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout + out.stderr

    assert "-march=native" in build()
    assert " -c " not in build()  # nothing changed: nothing compiled
    portable = build(MAGNET_PORTABLE="1")
    assert " -c " in portable and "-march=native" not in portable
    if shutil.which("readelf") is None:
        return
    (so,) = (src / "magnet").glob("_C*.so")
    dynamic = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
    paths = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines()
             if "RUNPATH" in line or "RPATH" in line]
    assert not any("scipy_openblas32" in p and "$ORIGIN" not in p
                   for path in paths for p in path.split(":")), paths
