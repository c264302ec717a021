"""Write the seed corpus of every harness into tests/fuzz/corpus/<harness>/ (small valid files,
each under 50 KB): ``python tests/fuzz/make_corpus.py``. Needs the test extras (gguf)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.test_fuzz_formats import (  # noqa: E402
    tiny_llama2c,
    tiny_llama2c_tokenizer,
)

LIMIT = 50_000


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    header, blobs, off = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs += raw
        off += len(raw)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blobs


def write_small_ggufs(tmp: Path) -> None:
    """Two GGUF files under 50 KB: metadata of every value type plus F32 / F16 / BF16 / Q8_0 /
    Q4_0 / Q4_1 tensors, and one 256-wide tensor of each K-quant (the tiny model of
    tests/test_fuzz_formats.py is 85 KB)."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize

    from tests.test_fuzz_formats import _k_blocks

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp / "types.gguf"), "llama")
    w.add_context_length(64)
    w.add_uint8("t.u8", 7)
    w.add_int16("t.i16", -3)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 0.25)
    w.add_float32("t.f32", 1.5)
    w.add_bool("t.b", True)
    w.add_string("t.s", "h\u00e9llo")
    w.add_array("t.arr", [1, 2, 3])
    w.add_array("t.strs", ["a", "bc"])
    w.add_array("t.floats", [0.5, -1.0])
    w.add_tensor("f32", x, raw_dtype=QT.F32)
    w.add_tensor("f16", x.astype(np.float16), raw_dtype=QT.F16)
    for qt in (QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1):
        w.add_tensor(qt.name.lower(), quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    w = gguf.GGUFWriter(str(tmp / "kquants.gguf"), "llama")
    for qt in (QT.Q4_K, QT.Q6_K):
        w.add_tensor(qt.name.lower(), _k_blocks(rng, qt, 2, 256), raw_dtype=qt)
    w.add_tensor("q5_k", rng.integers(0, 256, (2, 176), dtype=np.uint8), raw_dtype=QT.Q5_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    corpus = HERE / "corpus"
    out: dict[str, dict[str, bytes]] = {}
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal(12).astype("<f4")
    out["safetensors"] = {
        "f32.safetensors": safetensors_bytes({"a": ("F32", [3, 4], f32.tobytes())}),
        "mixed.safetensors": safetensors_bytes({
            "h": ("F16", [2, 3], f32[:6].astype("<f2").tobytes()),
            "b": ("BF16", [4], (f32[:4].view("<u4") >> 16).astype("<u2").tobytes()),
            "s": ("F32", [], f32[:1].tobytes()),
            "z": ("F32", [0, 5], b""),
        }),
        "meta.safetensors": (lambda h: struct.pack("<Q", len(h)) + h + f32[:2].tobytes())(
            json.dumps({"__metadata__": {"format": "pt"},
                        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()),
    }
    tmp = corpus / "_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    write_small_ggufs(tmp)
    tiny_llama2c(tmp / "shared.bin", dim=8, hidden=16, heads=2, kv_heads=1, vocab=16, seq=8)
    tiny_llama2c(tmp / "unshared.bin", dim=8, hidden=16, heads=2, kv_heads=2, vocab=16, seq=8,
                 shared=False, seed=1)
    tiny_llama2c_tokenizer(tmp / "tok.bin")
    out["gguf"] = {n: (tmp / n).read_bytes() for n in ("types.gguf", "kquants.gguf")}
    out["llama2c"] = {n: (tmp / n).read_bytes() for n in ("shared.bin", "unshared.bin")}
    tok = (tmp / "tok.bin").read_bytes()
    out["llama2c_tokenizer"] = {"tok40.bin": struct.pack("<h", 40) + tok,
                                "tok8.bin": struct.pack("<h", 8) + tok}
    # forward: the harness decodes its bytes with FuzzedDataProvider; a few arbitrary seeds
    out["forward"] = {f"seed{i}": bytes(rng.integers(0, 256, 64 * (i + 1), dtype=np.uint8))
                      for i in range(4)}
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    for harness, files in out.items():
        d = corpus / harness
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            assert len(data) < LIMIT, f"{harness}/{name} is {len(data)} bytes"
            (d / name).write_bytes(data)
        print(f"{harness}: {len(files)} files, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    main()
