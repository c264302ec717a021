"""Resource limits: a request whose buffers cannot exist raises MemoryError before anything is
allocated, instead of being granted by overcommit and OOM-killed when touched.

Every allocation of at least 64 MiB (csrc/core/alloc.c, MG_CHECKED_ALLOC) is compared with the
memory the system can still give (MemAvailable + SwapFree, else the physical memory); each
request below is sized from that figure, so it fails the same way on any machine."""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet import _C


def available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    pytest.skip("no /proc/meminfo")


@pytest.fixture(scope="module")
def model() -> magnet.Model:
    return magnet.Model.from_pretrained("stories260K")


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rows_beyond_memory(model: magnet.Model, T: int, per_token_bytes: int) -> int:
    return int(2 * available_bytes() / (T * per_token_bytes)) + 1


def test_logits_beyond_memory(model: magnet.Model) -> None:
    T = min(512, model.config.max_positions)
    B = rows_beyond_memory(model, T, 4 * model.config.vocab_size)
    ids = np.zeros((B, T), np.int32)
    before = rss_bytes()
    with pytest.raises(MemoryError, match="logits"):
        model.logits(ids)
    # nothing of the size of the logits was touched
    assert rss_bytes() - before < 16 * 4 * model.config.vocab_size * B


def test_pass_beyond_memory_as_a_whole(model: magnet.Model) -> None:
    """The logits (45 % of the free memory) and the pass's activations (about 80 %: 3.4 kB a
    token for stories260K against 2 kB of logits) each fit, but not together: each buffer alone
    passed its check, so the pass is checked whole (it used to grow until the OOM killer
    came)."""
    T = min(512, model.config.max_positions)
    B = int(0.45 * available_bytes() / (T * 4 * model.config.vocab_size)) + 1
    ids = np.zeros((B, T), np.int32)
    before = rss_bytes()
    with pytest.raises(MemoryError, match="needs more memory than is available"):
        model.logits(ids)
    assert rss_bytes() - before < 16 * 4 * model.config.vocab_size * B
    assert model.logits([1, 2, 3]).shape == (3, model.config.vocab_size)


def test_raw_forward_beyond_memory(model: magnet.Model) -> None:
    T = min(512, model.config.max_positions)
    B = rows_beyond_memory(model, T, 4 * model.config.hidden_size)
    ids = np.zeros((B, T), np.int32)
    with pytest.raises(MemoryError, match="hidden states"):
        model._c.forward(ids, np.ones((B, T), np.uint8), np.zeros((B, T), np.int32), True, False)


def test_embed_beyond_memory(model: magnet.Model) -> None:
    """The pooled output is small; the per-token activations are what cannot exist."""
    T = min(512, model.config.max_positions)
    B = rows_beyond_memory(model, T, 4 * model.config.hidden_size)
    ids = np.zeros((B, T), np.int32)
    ends = np.full(B, T, np.int32)
    with pytest.raises(MemoryError):
        _C.embed(model._c, ids, np.zeros((B, T), np.int32), np.zeros(B, np.int32), ends, 0,
                 False)


def test_generate_huge_requests(model: magnet.Model) -> None:
    """A max_new_tokens whose KV cache cannot exist, and a batch whose KV cache is beyond
    memory, raise MemoryError before the cache is allocated."""
    for n in (2**31, 10**12):
        with pytest.raises(MemoryError, match="KV cache"):
            model.generate("Once upon a time", max_new_tokens=n)
    T = model.config.max_positions
    per_row = 2 * model.config.num_layers * T * model.config.num_kv_heads * (
        model.config.hidden_size // model.config.num_heads) * 4 + 4 * model.config.vocab_size
    B = int(2 * available_bytes() / per_row) + 1
    if B >= 2**31:
        pytest.skip("a KV cache beyond memory needs more rows than an int holds")
    with pytest.raises(MemoryError):
        _C.Generator(model._c, B, T)


def test_trainer_micro_step_beyond_memory(model: magnet.Model) -> None:
    trainer = _C.Trainer(model._c, dict(mask_token_id=0, use_spans=1, all_span_frac=0.25,
                                        temperature=0.05, lora_dropout=0.0, resid_dropout=0.0,
                                        full_finetune=1, lr=1e-3, weight_decay=0.0,
                                        clip_norm=1.0, total_steps=1, warmup_steps=0))
    T = min(512, model.config.max_positions)
    B = rows_beyond_memory(model, T, 4 * model.config.vocab_size)
    toks = np.ones((B, T), np.int32)
    lens = np.full(B, T, np.int32)
    small = np.ones((2, 4), np.int32)
    with pytest.raises(MemoryError):
        trainer.micro_step(toks, lens, small, np.full(2, 4, np.int32), np.zeros(2, np.int32),
                           None, None, None, 1.0, 0.0, 0.0, 0, 1.0, 0, True)


def test_readers_refuse_tensors_beyond_memory(tmp_path: Path) -> None:
    """A tiny file that declares a huge tensor: the size check against the file comes first
    (ValueError), and nothing is allocated."""
    n = available_bytes()  # elements: 4x the memory as float32
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises((ValueError, MemoryError)):
        _C.read_safetensors(str(p))
    ckpt = tmp_path / "huge.bin"
    ckpt.write_bytes(struct.pack("<7i", 1 << 15, 1 << 17, 64, 8, 8, 1 << 15, 1 << 12) + b"\0" * 64)
    with pytest.raises((ValueError, MemoryError)):
        _C.read_llama2c(str(ckpt))


def test_small_allocations_unaffected(model: magnet.Model) -> None:
    out = model.logits(np.arange(4))
    assert out.shape == (4, model.config.vocab_size)
