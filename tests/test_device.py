"""Device selection on any machine: argument errors, and a clear error where no GPU can be used
(the GPU itself is tested by tests/test_cuda_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

import magnet
from magnet.device import cuda_unavailable_reason, parse_device, parse_precision


def test_parse_device_and_precision():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0)
    assert parse_device("CUDA:3") == ("cuda", 3)
    assert parse_device("cpu:0") == ("cpu", 0)  # as PyTorch spells it
    for bad in ("gpu", "cuda:x", "cpu:1", "", "cuda:\u00b2", "cuda:", "cpu:"):  # "cuda:" was 0
        with pytest.raises(ValueError, match="unknown device"):
            parse_device(bad)

    class TorchDevice:  # what torch.device offers, without importing torch
        type, index = "cuda", 2

        def __str__(self) -> str:
            return "cuda:2"

    assert parse_device(TorchDevice()) == ("cuda", 2)
    assert parse_precision("cuda", " BF16") == 1 and parse_precision("cpu", "FP32") == 0
    for huge in ("cuda:2147483648", "cuda:99999999999999999999"):
        with pytest.raises(ValueError, match="no CUDA device has index"):
            parse_device(huge)
    with pytest.raises(TypeError, match="device must be a str"):
        parse_device(0)
    assert parse_precision("cuda", None) == 1 and parse_precision("cpu", None) == 0
    with pytest.raises(ValueError, match="unknown precision"):
        parse_precision("cuda", "fp16")
    with pytest.raises(ValueError, match="unknown precision"):
        parse_precision("cuda", ["fp32"])
    with pytest.raises(ValueError, match="float32 only"):
        parse_precision("cpu", "bf16")


def test_cpu_model_reports_its_device():
    m = magnet.Model.from_pretrained("stories260K")
    assert m.device == "cpu" and m.precision == "fp32"
    ids = np.array([[1, 40, 50]], np.int32)
    want = m.logits(ids)
    assert m.to("cpu") is m
    np.testing.assert_array_equal(m.logits(ids), want)


@pytest.mark.skipif(magnet.cuda_is_available(), reason="a CUDA device is available here")
def test_no_gpu_is_a_clear_error():
    reason = cuda_unavailable_reason()
    assert reason  # says why: no CUDA in the build, no driver, or no device
    assert magnet.cuda_device_count() == 0
    m = magnet.Model.from_pretrained("stories260K")
    with pytest.raises(ValueError) as e:
        m.to("cuda")
    assert "CUDA" in str(e.value)
    assert m.device == "cpu"  # the model is untouched and still works
    m.generate("Once", max_new_tokens=2)
    with pytest.raises(ValueError):
        magnet.Model.from_pretrained("stories260K", device="cuda:0")
