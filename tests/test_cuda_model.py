"""The CUDA backend against the CPU backend, model by model: logits in the three role layouts,
training gradients, an adapt run, generation, infilling and embeddings, and moving a model
between devices. Runs on a GPU, or on the CPU emulator of CUDA (tests/cuda_emulated.sh builds
magnet that way); skipped otherwise, with the reason.

Bounds: fp32 mode agrees with the CPU to 1e-4 relative (reductions run in another order);
bf16 mode (bfloat16 GEMM inputs, float32 accumulation) to 5e-2 of the logits' scale, with the
same greedy tokens on these tiny models.
"""

from __future__ import annotations

import numpy as np
import pytest

import magnet
from magnet import _C
from magnet.device import cuda_unavailable_reason
from tests.hf_models import VOCAB, make_checkpoint

pytestmark = pytest.mark.skipif(not magnet.cuda_is_available(),
                                reason=f"no CUDA device: {cuda_unavailable_reason()}")

FAMILIES = ["llama", "qwen2", "gpt2"]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def _layouts(rng: np.random.Generator, B: int = 2, T: int = 12) -> dict[str, tuple]:
    ids = rng.integers(0, VOCAB, size=(B, T)).astype(np.int32)
    seg = np.zeros((B, T), np.int32)
    seg[1, T - 3:] = -1  # padding
    seg[0, T // 2:] = 1  # two packed sequences
    mixed = (rng.random((B, T)) < 0.5).astype(np.uint8)
    return {"span": (ids, np.ones((B, T), np.uint8), seg),
            "context": (ids, np.zeros((B, T), np.uint8), seg),
            "mixed": (ids, mixed, seg)}


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """The same tiny random model on the CPU and on the GPU (fp32)."""
    d = tmp_path_factory.mktemp(request.param)
    make_checkpoint(request.param, d)
    cpu = magnet.Model.from_pretrained(d)
    gpu = magnet.Model.from_pretrained(d, device="cuda", precision="fp32")
    return request.param, cpu, gpu


def test_device_and_state(pair):
    _, cpu, gpu = pair
    assert cpu.device == "cpu" and gpu.device.startswith("cuda")
    assert gpu.precision == "fp32"
    a, b = cpu.state_dict(), gpu.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("layout", ["span", "context", "mixed"])
def test_logits_match_cpu(pair, layout):
    _, cpu, gpu = pair
    ids, roles, seg = _layouts(np.random.default_rng(0))[layout]
    want = cpu.logits(ids, roles, seg)
    got = gpu.logits(ids, roles, seg)
    assert _rel(got, want) < 1e-4
    np.testing.assert_array_equal(got[seg < 0], 0.0)


def _grads(model, full: bool, seed: int = 5) -> tuple[dict, dict]:
    rng = np.random.default_rng(3)
    T = 14
    masked = rng.integers(3, VOCAB, size=(3, T)).astype(np.int32)
    mlen = np.array([T, T - 2, T - 5], np.int32)
    a = rng.integers(3, VOCAB, size=(3, 9)).astype(np.int32)
    alen = np.array([9, 7, 8], np.int32)
    apool = np.array([2, 1, 3], np.int32)
    cfg = dict(mask_token_id=1, mask_prob=0.3, use_spans=1, all_span_frac=0.0,
               lora_dropout=0.1, resid_dropout=0.1, temperature=0.05, full_finetune=int(full))
    if not full and model._c.lora_info() is None:
        model._c.attach_lora(4, 8.0, 0x7F, 3)
        state = {k: (v + np.random.default_rng(1).normal(0, 0.2, v.shape)).astype(np.float32)
                 for k, v in model._c.lora_state_dict().items()}
        model._c.load_lora_state_dict(state)
    trainer = _C.Trainer(model._c, cfg)
    losses = trainer.micro_step(masked, mlen, a, alen, apool, None, None, None, 1.0, 1.0, 1.0,
                                0, 1.0, seed, True)
    return losses, trainer.grad_dict()


@pytest.mark.parametrize("full", [True, False], ids=["full", "lora"])
def test_training_gradients_match_cpu(pair, full):
    """Dropout on: the GPU draws the same counter-based masks as the CPU."""
    _, cpu, gpu = pair
    if not full:  # the same adapters on both
        cpu._c.detach_lora()
        gpu._c.detach_lora()
    lc, gc = _grads(cpu, full)
    lg, gg = _grads(gpu, full)
    for k in ("mntp", "msg", "sscl"):
        assert abs(lc[k] - lg[k]) <= 1e-4 * max(1.0, abs(lc[k])), k
    assert gc.keys() == gg.keys()
    for k in gc:
        if np.abs(gc[k]).max() < 1e-7:
            assert np.abs(gg[k]).max() < 1e-5, k
        else:
            assert _rel(gg[k], gc[k]) < 1e-3, (k, _rel(gg[k], gc[k]))
    cpu._c.detach_lora()
    gpu._c.detach_lora()


def test_greedy_decoding_matches_cpu(pair):
    """Batched prompts of different lengths through the KV cache."""
    from magnet.generation import generate_ids

    _, cpu, gpu = pair
    prompts = [[3, 9, 4, 7, 11], [5, 2]]
    assert generate_ids(gpu, prompts, max_new_tokens=8, eos_id=-1) == \
        generate_ids(cpu, prompts, max_new_tokens=8, eos_id=-1)


def test_stories260k_end_to_end_on_gpu():
    """generate, infill and embed through the public API equal the CPU's."""
    cpu = magnet.Model.from_pretrained("stories260K")
    gpu = magnet.Model.from_pretrained("stories260K", device="cuda", precision="fp32")
    assert gpu.generate("Once upon a time", max_new_tokens=12) == \
        cpu.generate("Once upon a time", max_new_tokens=12)
    text = "Lily went to the [BLANK] and saw a big dog."
    assert gpu.infill(text, span_tokens=4).text == cpu.infill(text, span_tokens=4).text
    s = ["the cat sat", "a dog ran to the park", "hello"]
    for pooling in ("last", "mean"):
        e_cpu = cpu.embed(s, pooling=pooling, normalize=True)
        e_gpu = gpu.embed(s, pooling=pooling, normalize=True)
        assert _rel(e_gpu, e_cpu) < 1e-4
    assert _rel(gpu.embed(s[1], level="token").vectors,
                cpu.embed(s[1], level="token").vectors) < 1e-4


def test_adapt_curve_matches_cpu():
    """20 steps of the magnet preset (dropout twins included): the same losses within 1e-3."""
    text = ["Once upon a time there was a little girl named Lily. She liked to play outside.",
            "Tom had a red ball. He threw it to his dog, and the dog ran after it.",
            "The sun was warm and the birds sang in the tall green trees by the river."] * 6
    runs = []
    for device in ("cpu", "cuda"):
        m = magnet.Model.from_pretrained("stories260K", device=device, precision="fp32")
        r = m.adapt(text, steps=20, batch_size=4, seq_len=48, lr=1e-3, seed=0, progress=False)
        runs.append(r.history)
    for a, b in zip(*runs, strict=True):
        for k in ("mntp", "sscl", "msg"):
            assert abs(a[k] - b[k]) < 1e-3, (a["step"], k, a[k], b[k])


def test_move_between_devices_round_trip(tmp_path):
    m = magnet.Model.from_pretrained("stories260K")
    ids = np.array([[1, 40, 50, 60, 70]], np.int32)
    want = m.logits(ids)
    m.to("cuda", precision="fp32")
    m.adapt(["a short story about a cat and a dog."] * 8, steps=2, batch_size=2, seq_len=24,
            progress=False)
    m.to("cpu")
    assert m.device == "cpu"
    m.save_pretrained(tmp_path / "out")
    back = magnet.Model.from_pretrained(tmp_path / "out")
    np.testing.assert_allclose(back.logits(ids), m.logits(ids), atol=1e-5)
    assert not np.allclose(back.logits(ids), want)  # the adapted weights came back


def test_bf16_is_close_and_greedy_agrees():
    gpu = magnet.Model.from_pretrained("stories260K", device="cuda", precision="bf16")
    ref = magnet.Model.from_pretrained("stories260K")
    # 40 tokens: past the few-query forward, so attention takes the tensor-core kernels
    ids = np.array([[1] + [40 + 7 * i % 300 for i in range(39)]], np.int32)
    a, b = ref.logits(ids), gpu.logits(ids)
    assert gpu.precision == "bf16"
    assert np.abs(a - b).max() < 5e-2 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8


def test_bf16_lora_on_the_tensor_cores_trains_like_the_cuda_cores(monkeypatch):
    """MAGNET_CUDA_LORA_TC=1 moves LoRA's dropped down projections to TF32 mma kernels in bf16
    mode: the loss curve stays within bf16 noise of the CUDA-core kernels' curve, and differs
    from it (so the other kernels really ran)."""
    text = ["Once upon a time there was a little girl named Lily. She liked to play outside.",
            "Tom had a red ball. He threw it to his dog, and the dog ran after it."] * 6
    runs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("MAGNET_CUDA_LORA_TC", flag)
        m = magnet.Model.from_pretrained("stories260K", device="cuda", precision="bf16")
        r = m.adapt(text, steps=6, batch_size=4, seq_len=48, lr=1e-3, seed=0, progress=False)
        runs.append([[h[k] for k in ("mntp", "sscl", "msg")] for h in r.history])
    cores, tensor_cores = np.array(runs[0]), np.array(runs[1])
    np.testing.assert_allclose(tensor_cores, cores, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(tensor_cores, cores)


def test_bf16_attention_from_packed_operands_matches_the_staged_kernels(monkeypatch):
    """MAGNET_CUDA_ATTENTION_PACKED=1 runs attention_packed.cu (operands packed to bfloat16 once
    per call, tiles copied asynchronously) instead of attention_mma.cu. Where every tile walk
    starts at key 0 (one sequence per row from position 0; 150 tokens are three query tiles) the
    two give the same logits bit for bit, causal or mixed; training stays within bf16 noise."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 512, size=(2, 150)).astype(np.int32)
    mixed = (rng.random((2, 150)) < 0.3).astype(np.uint8)
    text = ["Once upon a time there was a little girl named Lily. She liked to play outside.",
            "Tom had a red ball. He threw it to his dog, and the dog ran after it."] * 6
    logits, curves = [], []
    for flag in ("0", "1"):
        monkeypatch.setenv("MAGNET_CUDA_ATTENTION_PACKED", flag)
        m = magnet.Model.from_pretrained("stories260K", device="cuda", precision="bf16")
        logits.append((m.logits(ids), m.logits(ids, mixed)))
        r = m.adapt(text, steps=4, batch_size=4, seq_len=48, lr=1e-3, seed=0, progress=False)
        curves.append([[h[k] for k in ("mntp", "sscl", "msg")] for h in r.history])
    for staged, packed in zip(logits[0], logits[1], strict=True):
        assert np.isfinite(packed).all()
        np.testing.assert_array_equal(packed, staged)
    np.testing.assert_allclose(np.array(curves[1]), np.array(curves[0]), rtol=2e-2, atol=2e-2)


def test_bad_device_requests():
    m = magnet.Model.from_pretrained("stories260K")
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")
    with pytest.raises(ValueError, match="float32 only"):
        m.to("cpu", precision="bf16")
    with pytest.raises(ValueError):
        m.to(f"cuda:{magnet.cuda_device_count() + 3}")
