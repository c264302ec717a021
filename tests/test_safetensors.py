"""magnet._C.read_safetensors against the `safetensors` package, and against broken files."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from magnet import _C

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def raw_file(header: str | dict, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict or literal JSON text) and a data section."""
    text = header if isinstance(header, str) else json.dumps(header)
    body = text.encode("utf-8")
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def write(tmp_path: Path, content: bytes, name: str = "t.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Exact float32 equality: same shape, same bits, NaN matched to NaN (payloads aside)."""
    assert got.dtype == np.float32 and want.dtype == np.float32
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


# ---- round trips ----


SHAPES = [(), (0,), (5,), (3, 0), (2, 3), (2, 3, 4), (1, 2, 3, 2), (2, 0, 3, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_shapes(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        f"layer.{i}.weight": np.asarray(rng.standard_normal(shape) * 10).astype(dtype)
        for i, shape in enumerate(SHAPES)
    }
    path = tmp_path / "m.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "np", "note": "x\"y\\"})
    got = _C.read_safetensors(str(path))
    assert set(got) == set(tensors)
    for name, want in tensors.items():
        assert got[name].shape == want.shape
        assert got[name].flags.c_contiguous and got[name].flags.writeable
        assert_bits_equal(got[name], want.astype(np.float32))


def test_f32_special_values(tmp_path: Path) -> None:
    bits = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001,
                     0x3F800000, 0x7F7FFFFF], dtype=np.uint32)
    path = tmp_path / "f32.safetensors"
    safetensors_numpy.save_file({"x": bits.view(np.float32)}, str(path))
    got = _C.read_safetensors(path)["x"]
    np.testing.assert_array_equal(got.view(np.uint32), bits)


def test_f16_every_bit_pattern(tmp_path: Path) -> None:
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    path = tmp_path / "f16.safetensors"
    safetensors_numpy.save_file({"h": halves.reshape(256, 256)}, str(path))
    got = _C.read_safetensors(path)["h"]
    assert_bits_equal(got, halves.astype(np.float32).reshape(256, 256))
    # Subnormals, infinities and NaNs are exercised above; spot-check a few by value too.
    flat = got.reshape(-1)
    assert flat[0x0001] == np.float32(2.0**-24)
    assert flat[0x03FF] == np.float32(1023 * 2.0**-24)
    assert flat[0x7C00] == np.inf and flat[0xFC00] == -np.inf
    assert np.isnan(flat[0x7E00]) and np.isnan(flat[0x7C01])
    assert flat[0x8000] == 0 and np.signbit(flat[0x8000])


def _bf16_reference(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def test_bf16_every_bit_pattern_handwritten(tmp_path: Path) -> None:
    words = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    header = {"b": {"dtype": "BF16", "shape": [16, 4096], "data_offsets": [0, 2 * 65536]}}
    path = write(tmp_path, raw_file(header, words.astype("<u2").tobytes()))
    got = _C.read_safetensors(path)["b"]
    want = _bf16_reference(words).reshape(16, 4096)
    # A BF16 -> F32 widening is a shift, so even NaN payloads must match bit for bit.
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_bf16_from_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(3, 5, 7, generator=gen).to(torch.bfloat16),
        "s": torch.tensor(1.5, dtype=torch.bfloat16),
        "e": torch.zeros(0, 4, dtype=torch.bfloat16),
        "v": torch.tensor([float("inf"), -float("inf"), 1e-40, -0.0], dtype=torch.bfloat16),
        "f": torch.randn(2, 2, 2, 2, generator=gen),
        "h": torch.randn(9, generator=gen).to(torch.float16),
    }
    path = tmp_path / "torch.safetensors"
    safetensors_torch.save_file(tensors, str(path), metadata={"source": "torch"})
    got = _C.read_safetensors(path)
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        assert_bits_equal(got[name], t.float().numpy())


def test_names_are_decoded(tmp_path: Path) -> None:
    tensors = {"ä.weight": np.ones(2, np.float32), "日本": np.zeros(1, np.float32),
               'q"uote\\': np.full(3, 2.0, np.float32)}
    path = tmp_path / "names.safetensors"
    safetensors_numpy.save_file(tensors, str(path))
    got = _C.read_safetensors(path)
    assert set(got) == set(tensors)
    # Escaped forms, a surrogate pair among them, decode to the same names.
    header = ('{"\\u00e4\\ud83d\\ude00\\n\\/":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
              '"__metadata__":{"a":"\\t"}}')
    got = _C.read_safetensors(write(tmp_path, raw_file(header, b"\0\0\x80\x3f")))
    assert list(got) == ["ä\U0001F600\n/"] and got["ä\U0001F600\n/"][0] == 1.0


def test_empty_and_padded_headers(tmp_path: Path) -> None:
    assert _C.read_safetensors(write(tmp_path, raw_file("{}"))) == {}
    assert _C.read_safetensors(write(tmp_path, raw_file('{"__metadata__":null}   '))) == {}
    header = ' \n{ "x" : { "shape" : [ ] , "data_offsets" : [ 0 , 4 ] , "dtype" : "F32" } }\t '
    got = _C.read_safetensors(write(tmp_path, raw_file(header, struct.pack("<f", 7.0))))
    assert got["x"].shape == () and got["x"] == 7.0


def test_path_types(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    safetensors_numpy.save_file({"a": np.ones(2, np.float32)}, str(path))
    for p in (path, str(path), bytes(path)):
        np.testing.assert_array_equal(_C.read_safetensors(p)["a"], np.ones(2, np.float32))


# ---- broken files ----


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _C.read_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        _C.read_safetensors(tmp_path / "nodir" / "nope.safetensors")


def test_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        _C.read_safetensors(tmp_path)


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
GOOD_DATA = struct.pack("<2f", 1.0, 2.0)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "too short"),
        (b"\x02\0\0\0\0\0\0", "too short"),
        (raw_file(GOOD, GOOD_DATA, length=10**6), "header length"),
        (raw_file(GOOD, GOOD_DATA, length=2**64 - 1), "header length"),
        (raw_file(GOOD, GOOD_DATA, length=200_000_000), "header length"),
        (raw_file(GOOD, GOOD_DATA[:6]), "data_offsets"),  # data section truncated
        (raw_file(GOOD, b""), "data_offsets"),
    ],
)
def test_bad_lengths(tmp_path: Path, content: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _C.read_safetensors(write(tmp_path, content))


BAD_JSON = [
    "",
    "   ",
    "[]",
    "{",
    '{"a"',
    '{"a":',
    '{"a":{}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x',
    '{"a":{"dtype":"F32","shape":[2,],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}',
    '{"a":{"dtype":F32,"shape":[2],"data_offsets":[0,8]}}',
    "{'a':{'dtype':'F32','shape':[2],'data_offsets':[0,8]}}",
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]} "b":1}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}}',
    '{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"a":{"shape":[2],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":[2]}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}}',
    '{"a\\x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"a\\u12":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"\\udc00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"a\tb":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":1}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":[]}',
    '{"__metadata__":{},"__metadata__":{}}',
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    '"a":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}',
    '{"a" : {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}\x00}',
]


@pytest.mark.parametrize("header", BAD_JSON)
def test_bad_json(tmp_path: Path, header: str) -> None:
    with pytest.raises(ValueError):
        _C.read_safetensors(write(tmp_path, raw_file(header, GOOD_DATA)))


def test_bad_json_message_names_position(tmp_path: Path) -> None:
    header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},}'
    with pytest.raises(ValueError, match=rf"byte {len(header) - 1}\b"):
        _C.read_safetensors(write(tmp_path, raw_file(header, GOOD_DATA)))


def test_invalid_utf8_name(tmp_path: Path) -> None:
    body = b'{"\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    content = struct.pack("<Q", len(body)) + body + GOOD_DATA
    with pytest.raises(ValueError, match="UTF-8"):
        _C.read_safetensors(write(tmp_path, content))


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "header, match",
    [
        ({"w": entry(offsets=(0, 16))}, "data_offsets"),  # past the end
        ({"w": entry(offsets=(8, 0))}, "data_offsets"),  # end before begin
        ({"w": entry(offsets=(-4, 4))}, "non-negative"),
        ({"w": entry(shape=(3,))}, "needs 12 bytes"),  # end - begin mismatch with shape
        ({"w": entry(shape=(1,))}, "needs 4 bytes"),
        ({"w": entry(shape=(-2,))}, "negative"),
        ({"w": entry(shape=(-1, -2), offsets=(0, 8))}, "negative"),
        ({"w": entry(shape=(2**62, 2**62))}, "absurd"),
        ({"w": entry(shape=(2**31, 2**31, 2**31, 0))}, "absurd"),
        ({"w": entry(shape=(2**62,))}, "absurd"),
        ({"w": entry(shape=(1, 1, 1, 1, 2))}, "dimensions"),
        ({"w": entry(offsets=(0, 8)), "v": entry(offsets=(4, 12))}, "overlap"),
        ({"w": entry(offsets=(0, 8)), "v": entry(shape=(2,), offsets=(0, 8))}, "overlap"),
        ({"w": entry(dtype="I64", shape=(1,))}, "'w'.*I64"),
        ({"w": entry(dtype="F64", shape=(1,))}, "'w'.*F64"),
        ({"w": entry(dtype="U8", shape=(8,))}, "'w'.*U8"),
        ({"w": entry(dtype="f32")}, "'w'.*f32"),
    ],
)
def test_bad_tensor_info(tmp_path: Path, header: dict, match: str) -> None:
    data = GOOD_DATA + b"\0" * 8 if "v" in header else GOOD_DATA
    with pytest.raises(ValueError, match=match):
        _C.read_safetensors(write(tmp_path, raw_file(header, data)))


def test_unsupported_dtype_from_reference_writer(tmp_path: Path) -> None:
    path = tmp_path / "i64.safetensors"
    safetensors_numpy.save_file({"ok": np.ones(2, np.float32),
                                 "position_ids": np.arange(4, dtype=np.int64)}, str(path))
    with pytest.raises(ValueError, match="'position_ids'.*I64"):
        _C.read_safetensors(path)


def test_skipped_tensors_are_not_read(tmp_path: Path) -> None:
    """Tensors named in skip are left out whatever their dtype (old GPT-2 files store their mask
    buffers as U8 or BOOL); only their byte range is checked."""
    path = tmp_path / "mask.safetensors"
    safetensors_numpy.save_file({"w": np.arange(3, dtype=np.float32),
                                 "h.0.attn.bias": np.ones((1, 1, 4, 4), np.uint8),
                                 "b": np.zeros(2, np.bool_)}, str(path))
    with pytest.raises(ValueError, match="'b'.*BOOL"):
        _C.read_safetensors(path, ["h.0.attn.bias"])
    got = _C.read_safetensors(path, ("h.0.attn.bias", "b", "not there"))
    assert list(got) == ["w"] and got["w"].tolist() == [0.0, 1.0, 2.0]
    assert list(_C.read_safetensors(path, ["w", "h.0.attn.bias", "b"])) == []
    outside = {"w": entry(), "m": {"dtype": "U8", "shape": [4], "data_offsets": [8, 64]}}
    with pytest.raises(ValueError, match="'m'.*outside"):
        _C.read_safetensors(write(tmp_path, raw_file(outside, GOOD_DATA)), ["m"])
    with pytest.raises(TypeError):
        _C.read_safetensors(path, [1])


def test_gaps_between_tensors_are_allowed(tmp_path: Path) -> None:
    data = struct.pack("<f", 1.0) + b"\xaa" * 4 + struct.pack("<f", 2.0)
    header = {"a": entry(shape=(1,), offsets=(0, 4)), "b": entry(shape=(1,), offsets=(8, 12)),
              "e": entry(shape=(0,), offsets=(4, 4)), "e2": entry(shape=(0, 3), offsets=(4, 4))}
    got = _C.read_safetensors(write(tmp_path, raw_file(header, data)))
    assert got["a"][0] == 1.0 and got["b"][0] == 2.0
    assert got["e"].shape == (0,) and got["e2"].shape == (0, 3)


# ---- random damage never crashes ----


def test_random_mutations_never_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "base.safetensors"
    safetensors_numpy.save_file(
        {"a": rng.standard_normal((3, 4)).astype(np.float32),
         "b": rng.standard_normal(5).astype(np.float16),
         "c": np.array(2.5, np.float32), "d": np.zeros((0, 2), np.float32)},
        str(path), metadata={"k": "v", "format": "pt"})
    base = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", base[:8])[0]
    rand = random.Random(1234)
    target = tmp_path / "mutant.safetensors"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1000):
        data = bytearray(base)
        for _ in range(rand.randint(1, 3)):
            kind = rand.random()
            # Most damage lands in the length field and header, where the parsing is.
            pos = rand.randrange(0, header_end if rand.random() < 0.85 else len(data) + 1)
            pos = min(pos, len(data))
            if kind < 0.45 and pos < len(data):
                data[pos] ^= 1 << rand.randrange(8)
            elif kind < 0.6 and pos < len(data):
                data[pos] = rand.choice(b'{}[]",:\\u0123456789-.e \x00\xff')
            elif kind < 0.72:
                del data[pos:]
            elif kind < 0.86:
                data[pos:pos] = bytes(rand.randrange(256) for _ in range(rand.randint(1, 4)))
            else:
                del data[pos:pos + rand.randint(1, 4)]
        target.write_bytes(bytes(data))
        try:
            out = _C.read_safetensors(target)
        except (ValueError, OSError, MemoryError):
            outcomes["error"] += 1
        else:
            assert all(v.dtype == np.float32 for v in out.values())
            outcomes["ok"] += 1
    assert outcomes["error"] > 500
