"""GGUF reader: dequantization against the `gguf` package, metadata round trip, hostile files,
and SmolLM2 tokenizer / logits parity with Hugging Face transformers."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import magnet
from magnet.formats.gguf import load_gguf

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, QT]], meta=None) -> None:
    """A GGUF file through the reference writer; tensors are (array, raw ggml type)."""
    w = gguf.GGUFWriter(str(path), "llama")
    for key, (kind, value) in (meta or {}).items():
        getattr(w, f"add_{kind}")(key, value)
    for name, (arr, qtype) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference_tensors(path: Path) -> dict[str, np.ndarray]:
    """The gguf package's own reading and dequantization, in numpy (row-major) shape."""
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        out[t.name] = dequantize(t.data, t.tensor_type).reshape(shape)
    return out


# K-quant blocks: (bytes per block, byte offsets of their f16 scale fields)
_K_LAYOUT = {QT.Q4_K: (144, (0, 2)), QT.Q5_K: (176, (0, 2)), QT.Q6_K: (210, (208,))}


def random_blocks(rng: np.random.Generator, qtype: QT, rows: int, cols: int) -> np.ndarray:
    """Random K-quant bytes (gguf cannot quantize these) with finite f16 scales."""
    size, scale_offsets = _K_LAYOUT[qtype]
    nblocks = rows * cols // 256
    raw = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    for off in scale_offsets:
        scales = rng.uniform(-0.05, 0.05, size=nblocks).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
    return raw.reshape(rows, cols // 256 * size)


@pytest.mark.parametrize(
    "qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q5_K, QT.Q6_K],
    ids=lambda q: q.name,
)
def test_dequantize_matches_gguf_package(tmp_path: Path, qtype: QT) -> None:
    rng = np.random.default_rng(int(qtype))
    tensors = {}
    for name, shape in (("a", (4, 512)), ("b.weight", (3, 2, 256)), ("c", (512,))):
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == QT.F32:
            tensors[name] = (x, QT.F32)
        elif qtype == QT.F16:
            tensors[name] = (x.astype(np.float16), QT.F16)
        elif qtype in _K_LAYOUT:
            rows = int(np.prod(shape[:-1]))
            raw = random_blocks(rng, qtype, rows, shape[-1])
            tensors[name] = (raw.reshape(*shape[:-1], -1), qtype)
        else:
            tensors[name] = (quantize(x, qtype), qtype)
    path = tmp_path / f"{qtype.name}.gguf"
    write_gguf(path, tensors)
    meta, got = magnet._C.read_gguf(str(path))
    want = reference_tensors(path)
    assert meta["general.architecture"] == "llama"
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float32
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name].astype(np.float32), err_msg=name)


def test_unsupported_type_names_it(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    path = tmp_path / "q5_0.gguf"
    write_gguf(path, {"t": (quantize(x, QT.Q5_0), QT.Q5_0)})
    with pytest.raises(ValueError, match="Q5_0"):
        magnet._C.read_gguf(path)


def test_metadata_round_trip(tmp_path: Path) -> None:
    meta = {
        "t.u8": ("uint8", 200), "t.i8": ("int8", -100), "t.u16": ("uint16", 60000),
        "t.i16": ("int16", -30000), "t.u32": ("uint32", 4_000_000_000),
        "t.i32": ("int32", -2_000_000_000), "t.f32": ("float32", 1.5),
        "t.f64": ("float64", 1e-300), "t.bool": ("bool", True), "t.no": ("bool", False),
        "t.str": ("string", "héllo wörld"), "t.u64": ("uint64", 2**63 + 5),
        "t.i64": ("int64", -(2**62)), "t.ints": ("array", [1, -2, 3]),
        "t.floats": ("array", [0.5, -2.25]), "t.strs": ("array", ["a", "", "ü"]),
        "t.nested": ("array", [[1, 2], [3]]),
    }
    path = tmp_path / "meta.gguf"
    write_gguf(path, {}, meta)
    got, tensors = magnet._C.read_gguf(path)  # os.PathLike accepted too
    assert tensors == {}
    for key, (_, value) in meta.items():
        assert got[key] == value, key
        assert type(got[key]) is type(value), key
    # agree with the gguf package's reading (which flattens nested arrays, so not those)
    reader = gguf.GGUFReader(str(path))
    for key in meta:
        if key == "t.nested":
            continue
        assert reader.fields[key].contents() == got[key], key


def test_alignment_and_v2(tmp_path: Path) -> None:
    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    path = tmp_path / "aligned.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.data_alignment = 64
    w.add_custom_alignment(64)
    w.add_tensor("a", x[:, :3].copy())
    w.add_tensor("b", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _, t = magnet._C.read_gguf(path)
    np.testing.assert_array_equal(t["b"], x)
    np.testing.assert_array_equal(t["a"], x[:, :3])
    # GGUF v2 has the same layout as v3: patch the version field
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    _, t2 = magnet._C.read_gguf(v2)
    np.testing.assert_array_equal(t2["b"], x)


# ---- hostile input -------------------------------------------------------------------------


def _gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _raw_gguf(
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    offset: int = 0,
    ne: tuple[int, ...] = (4, 2),
    str_len: int | None = None,
    data_bytes: int = 32,
) -> bytes:
    """A hand-built GGUF: one string kv and one F32 tensor, with knobs to break it."""
    key = _gstr(b"general.architecture")
    val = b"llama"
    kv = key + struct.pack("<I", 8) + struct.pack("<Q", len(val) if str_len is None else str_len)
    kv += val
    info = _gstr(b"w") + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
    info += struct.pack("<IQ", 0, offset)
    head = b"GGUF" + struct.pack("<IQQ", version, 1 if n_tensors is None else n_tensors,
                                 1 if n_kv is None else n_kv)
    body = head + kv + info
    body += b"\0" * (-len(body) % 32)
    return body + np.arange(data_bytes // 4, dtype=np.float32).tobytes()


def test_hand_built_file_reads(tmp_path: Path) -> None:
    p = tmp_path / "ok.gguf"
    p.write_bytes(_raw_gguf())
    meta, t = magnet._C.read_gguf(p)
    assert meta == {"general.architecture": "llama"}
    np.testing.assert_array_equal(t["w"], np.arange(8, dtype=np.float32).reshape(2, 4))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"GGML" + _raw_gguf()[4:], "bad magic"),
        (_raw_gguf(version=1), "version 1"),
        (_raw_gguf(version=4), "version 4"),
        (_raw_gguf(version=3 << 24), "big-endian"),
        (_raw_gguf(offset=32), "runs past the end"),
        (_raw_gguf(offset=2**64 - 32), "runs past the end"),
        (_raw_gguf(offset=4), "alignment"),
        (_raw_gguf(data_bytes=16), "runs past the end"),
        (_raw_gguf(n_tensors=2**62), "tensor count"),
        (_raw_gguf(n_kv=2**40), "metadata count"),
        (_raw_gguf(str_len=2**63), "truncated|absurd"),
        (_raw_gguf(ne=(2**40, 2**40)), "absurd|runs past"),
        (_raw_gguf(ne=(4, 2, 1, 1, 1)), "dimensions"),
        (_raw_gguf()[:20], "header"),
        (_raw_gguf()[:40], "truncated|absurd"),
        (_raw_gguf()[:90], "truncated"),
        (b"", "header"),
    ],
    ids=[
        "magic", "v1", "v4", "byteswapped", "offset-past-end", "offset-overflow", "misaligned",
        "short-data", "absurd-tensors", "absurd-kv", "absurd-string", "absurd-shape", "5-dims",
        "tiny", "cut-in-kv", "cut-in-info", "empty",
    ],
)
def test_bad_files_raise(tmp_path: Path, data: bytes, match: str) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=match):
        magnet._C.read_gguf(p)


def test_every_truncation_is_an_error(tmp_path: Path) -> None:
    full = _raw_gguf()
    p = tmp_path / "cut.gguf"
    for n in range(len(full)):
        p.write_bytes(full[:n])
        with pytest.raises(ValueError):
            magnet._C.read_gguf(p)


def test_header_longer_than_the_first_read(tmp_path: Path) -> None:
    """The header is read in growing pieces (2 MiB first): metadata that crosses every piece's
    end reads back whole, tensor data after it too, and cuts past the first piece are errors."""
    rng = np.random.default_rng(5)
    words = [f"w{i}-" + "x" * int(n) for i, n in enumerate(rng.integers(0, 40, 150_000))]
    ints = rng.integers(-(2**31), 2**31 - 1, 700_000).tolist()
    weight = rng.standard_normal((4, 32)).astype(np.float32)
    path = tmp_path / "long.gguf"
    meta = {"t.words": ("array", words), "t.ints": ("array", ints), "t.after": ("string", "end")}
    write_gguf(path, {"w": (weight, QT.F32)}, meta)
    assert path.stat().st_size > 6 << 20  # three pieces at least: 2, 4 and the rest
    got, tensors = magnet._C.read_gguf(path)
    assert got["t.words"] == words and got["t.ints"] == ints and got["t.after"] == "end"
    np.testing.assert_array_equal(tensors["w"], weight)
    full = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in ((2 << 20) + 1, (4 << 20) + 3, len(full) - 4 * 32 * 4 - 1):
        cut.write_bytes(full[:n])
        with pytest.raises(ValueError, match="truncated|runs past the end"):
            magnet._C.read_gguf(cut)


def _two_tensor_gguf(names: tuple[bytes, bytes], offsets: tuple[int, int]) -> bytes:
    """A hand-built GGUF with two F32 [8] tensors (32 bytes each) at the given data offsets."""
    kv = _gstr(b"general.architecture") + struct.pack("<I", 8) + _gstr(b"llama")
    info = b"".join(_gstr(n) + struct.pack("<IQIQ", 1, 8, 0, off)
                    for n, off in zip(names, offsets, strict=True))
    body = b"GGUF" + struct.pack("<IQQ", 3, 2, 1) + kv + info
    body += b"\0" * (-len(body) % 32)
    return body + np.arange(16, dtype=np.float32).tobytes()


@pytest.mark.parametrize("names, offsets, match", [
    ((b"a", b"b"), (0, 0), "share data bytes"),
    ((b"a", b"b"), (32, 0), None),
    ((b"a", b"a"), (0, 32), "names tensor 'a' twice"),
])
def test_tensors_may_not_share_data_or_names(tmp_path: Path, names, offsets, match) -> None:
    """Tensor infos pointing at the same bytes let a 73 KB file ask for 250 MiB of float32
    (a thousand copies), and quadratically more as it grows: overlaps are refused, as in
    safetensors."""
    p = tmp_path / "two.gguf"
    p.write_bytes(_two_tensor_gguf(names, offsets))
    if match is None:
        _, tensors = magnet._C.read_gguf(p)
        np.testing.assert_array_equal(tensors["a"], np.arange(8, 16, dtype=np.float32))
        np.testing.assert_array_equal(tensors["b"], np.arange(8, dtype=np.float32))
        return
    with pytest.raises(ValueError, match=match):
        magnet._C.read_gguf(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        magnet._C.read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "nope.gguf")


def test_unknown_architecture(tmp_path: Path) -> None:
    p = tmp_path / "arch.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="mamba"):
        load_gguf(p)


# ---- SmolLM2: tokenizer and logits against transformers -------------------------------------


def _text_lines(shared: Path, want: int) -> list[str]:
    lines: list[str] = []
    wiki = shared / "wikitext2" / "wiki.test.tokens"
    if wiki.is_file():
        lines += [ln for ln in wiki.read_text(encoding="utf-8").splitlines() if ln.strip()][:want]
    for book in sorted((shared / "text" / "gutenberg").glob("*.txt")):
        text = book.read_text(encoding="utf-8", errors="replace").splitlines()
        lines += [ln for ln in text if ln.strip()][: want // 4]
    return lines


def _hf_tokenizer(gguf_path: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent),
                                                      gguf_file=gguf_path.name)


def _smollm2_reference(gguf_path: Path):
    """transformers' GGUF tokenizer for SmolLM2 with the pre-tokenizer SmolLM2 publishes (its
    tokenizer.json: every digit on its own, then GPT-2's split; llama.cpp's "smollm" is the
    same). transformers' GGUF loader does not know the name "smollm" and splits with GPT-2's
    regex alone, which differs on spaces before a digit ("  1. item") and on numerals such as
    "①", so it is not the reference there."""
    from tokenizers import pre_tokenizers

    ref = _hf_tokenizer(gguf_path)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return ref


# text where SmolLM2's split differs from GPT-2's: numbered lists, indentation before a digit,
# numerals that are not decimal digits
_SMOLLM2_DIGIT_LINES = ["  1. When shall we three meet againe?", "   3. item", "x \u2460 y",
                        "\tdef f():\n        return 2", "Chapter \u216b.  12 apples, 3.5 kg",
                        "    10   20   30"]


def test_smollm2_tokenizer_matches_transformers(smollm2_gguf: Path, shared_data: Path) -> None:
    lines = _text_lines(shared_data, 1000)
    if len(lines) < 1000:
        pytest.skip(f"only {len(lines)} lines of text in {shared_data}")
    lines += _SMOLLM2_DIGIT_LINES
    ref = _smollm2_reference(smollm2_gguf)
    tok = load_gguf(smollm2_gguf).tokenizer
    assert tok is not None
    assert tok.bos_id == 1 and tok.eos_id == 2
    assert tok.add_bos_default is False  # the file says add_bos_token = false
    ours = tok.encode_batch(lines)
    theirs = [ref(line)["input_ids"] for line in lines]
    matched = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"\nSmolLM2 tokenizer: {matched}/{len(lines)} lines identical to the reference")
    assert matched == len(lines)
    specials = "<|im_start|>user\nHi!<|im_end|>\n<|endoftext|>"
    assert tok.encode(specials) == ref(specials)["input_ids"]
    assert tok.decode(tok.encode(lines[0])) == ref.decode(ref(lines[0])["input_ids"])


def test_smollm2_logits_match_transformers(smollm2_gguf: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
    from magnet.model import Model

    t0 = time.perf_counter()
    model = Model.from_pretrained(smollm2_gguf)
    text = ("The Eiffel Tower is 324 metres tall, about the same height as an 81-storey "
            "building, and was the tallest structure in the world until 1930.")
    ids = model.tokenizer.encode(text)
    ours = model.logits(ids)
    t1 = time.perf_counter()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0].numpy()
    t2 = time.perf_counter()
    diff = float(np.abs(ours - theirs).max())
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"\nSmolLM2 logits over {len(ids)} tokens: max |diff| {diff:.3g}, top-1 agreement "
          f"{top1:.3f} (magnet {t1 - t0:.1f} s, transformers {t2 - t1:.1f} s)")
    assert ours.shape == theirs.shape
    assert diff < 1e-3
    assert top1 == 1.0


def test_sentencepiece_tokenizer_matches_transformers(tmp_path: Path, shared_data: Path) -> None:
    """A llama (SentencePiece) vocabulary with scores and no merges, as llama.cpp writes
    LLaMA-2's, tokenizes as transformers' GGUF tokenizer does (BOS on by default)."""
    spm = pytest.importorskip("sentencepiece")
    model = shared_data / "tokenizers" / "llama2" / "tokenizer.model"
    if not model.is_file():
        pytest.skip(f"{model} not found")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1)
    meta = {
        "llama.block_count": ("uint32", 1), "llama.context_length": ("uint32", 64),
        "llama.embedding_length": ("uint32", 8), "llama.feed_forward_length": ("uint32", 16),
        "llama.attention.head_count": ("uint32", 2),
        "tokenizer.ggml.model": ("string", "llama"), "tokenizer.ggml.tokens": ("array", tokens),
        "tokenizer.ggml.scores": ("array", scores),
        "tokenizer.ggml.token_type": ("array", types),
        "tokenizer.ggml.bos_token_id": ("uint32", 1), "tokenizer.ggml.eos_token_id": ("uint32", 2),
        "tokenizer.ggml.unknown_token_id": ("uint32", 0),
    }
    path = tmp_path / "sp.gguf"
    write_gguf(path, {}, meta)
    from magnet.formats.gguf import gguf_tokenizer

    tok = gguf_tokenizer(magnet._C.read_gguf(path)[0])
    assert tok.add_bos_default is True
    ref = _hf_tokenizer(path)
    lines = _text_lines(shared_data, 400)
    lines += ["  leading spaces", "<s> hi </s>", "日本語 ü", "\ttab\nnewline", ""]
    matched = sum(tok.encode(ln) == ref(ln)["input_ids"] for ln in lines)
    print(f"\nLLaMA-2 SentencePiece GGUF tokenizer: {matched}/{len(lines)} lines identical")
    assert matched == len(lines)


def gpt2_vocab_gguf(path: Path, shared_data: Path, pre: str, **extra: Any) -> Path:
    """A byte-level GGUF tokenizer (tokenizer.ggml.pre = ``pre``) with GPT-2's vocabulary
    standing in for a model's; ``extra``: more metadata."""
    import json

    src = shared_data / "tokenizers" / "gpt2"
    if not (src / "encoder.json").is_file() or not (src / "vocab.bpe").is_file():
        pytest.skip(f"{src}/encoder.json and vocab.bpe not found")
    enc = json.loads((src / "encoder.json").read_text(encoding="utf-8"))
    tokens = sorted(enc, key=enc.get)
    merges = [ln for ln in (src / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
              if ln]
    meta = {
        "llama.block_count": ("uint32", 1), "llama.context_length": ("uint32", 64),
        "llama.embedding_length": ("uint32", 8), "llama.feed_forward_length": ("uint32", 16),
        "llama.attention.head_count": ("uint32", 2),
        "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", pre),
        "tokenizer.ggml.tokens": ("array", tokens), "tokenizer.ggml.merges": ("array", merges),
        "tokenizer.ggml.token_type": ("array", [3 if t == "<|endoftext|>" else 1
                                                 for t in tokens]),
        "tokenizer.ggml.bos_token_id": ("uint32", 50256),
        "tokenizer.ggml.eos_token_id": ("uint32", 50256), **extra,
    }
    write_gguf(path, {}, meta)
    return path


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2"])
def test_byte_level_split_follows_tokenizer_pre(tmp_path: Path, shared_data: Path,
                                                pre: str) -> None:
    """tokenizer.ggml.pre picks the text split a byte-level vocabulary was learned with (Llama 3
    groups digits by three, Qwen2 splits every digit), as transformers' GGUF tokenizer does.
    GPT-2's vocabulary stands in for the real ones."""
    path = gpt2_vocab_gguf(tmp_path / f"{pre}.gguf", shared_data, pre)
    from magnet.formats.gguf import gguf_tokenizer

    tok = gguf_tokenizer(magnet._C.read_gguf(path)[0])
    ref = _hf_tokenizer(path)
    texts = ["12345678", "In 2024, 1000000 people", "I DON'T know", "a\n\n\nb", "x 123 y"]
    for t in texts:
        assert tok.encode(t, add_bos=False) == ref(t, add_special_tokens=False)["input_ids"], t
    digits = [tok.backend.id_to_token(i) for i in tok.encode("12345678", add_bos=False)]
    assert digits == {"llama-bpe": ["123", "456", "78"], "qwen2": list("12345678"),
                      "gpt-2": ["123", "45", "678"]}[pre]


@pytest.mark.parametrize("keys, want", [
    ({}, ("default", 1.0)),
    ({"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, ("linear", 4.0)),
    ({"rope.scaling.factor": 4.0}, ("linear", 4.0)),  # llama.cpp: the type defaults to linear
    ({"rope.scale_linear": 2.0}, ("linear", 2.0)),  # the pre-2023 key
    ({"rope.scaling.type": "none", "rope.scaling.factor": 4.0}, ("default", 1.0)),
    ({"rope.scaling.factor": 1.0}, ("default", 1.0)),
])
def test_rope_scaling_keys_as_llama_cpp_reads_them(keys, want) -> None:
    from magnet.formats.gguf import gguf_config

    meta = {"general.architecture": "llama", "llama.block_count": 1,
            "llama.context_length": 64, "llama.embedding_length": 8,
            "llama.feed_forward_length": 16, "llama.attention.head_count": 2,
            **{f"llama.{k}": v for k, v in keys.items()}}
    tensors = {"token_embd.weight": np.zeros((10, 8), np.float32)}
    config = gguf_config(meta, tensors)
    assert (config.rope_type, config.rope_factor) == want
