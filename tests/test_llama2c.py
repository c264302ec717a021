"""llama2.c checkpoints and tokenizers: golden greedy decoding, llama2.c-exact encoding, a numpy
reference forward for synthetic (untied, GQA) checkpoints, and malformed files."""

from __future__ import annotations

import ast
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet import _C
from magnet.formats.llama2c import load_llama2c

# ---------------------------------------------------------------- helpers


def _read_golden(path: Path) -> tuple[list[int], str]:
    ids: list[int] | None = None
    text: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("ids:"):
            ids = ast.literal_eval(line[len("ids:"):].strip())
        elif line.startswith("text:"):
            text = ast.literal_eval(line[len("text:"):].strip())
    assert ids is not None and text is not None, f"unexpected golden file format in {path}"
    return ids, text


def _greedy(model: _C.Model, steps: int) -> list[int]:
    """Greedy decoding from BOS by re-running the whole sequence each step (no KV cache)."""
    ids = [1]
    for _ in range(steps):
        x = np.array([ids], dtype=np.int32)
        _, logits = model.forward(x, np.ones_like(x, dtype=np.uint8), np.zeros_like(x), False, True)
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[1:]


def _llama2c_piece_text(pieces: list[bytes], ids: list[int]) -> str:
    """llama2.c's per-token decode, concatenated: <0xXX> pieces become their byte."""
    out = bytearray()
    for i in ids:
        p = pieces[i]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            out.append(int(p[3:5], 16))
        else:
            out += p
    return out.decode("utf-8")


def _llama2c_encode(text: str, pieces: list[bytes], scores: list[float]) -> list[int]:
    """A transcription of llama2.c's ``encode`` (no BOS/EOS): dummy-prefix space, one token per
    UTF-8 character (else its bytes + 3), then merge the best-scoring adjacent pair, leftmost
    on ties, until no pair concatenates to a vocabulary piece."""
    lookup: dict[bytes, int] = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    tokens: list[int] = []
    if text:
        tokens.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            tokens.append(lookup[b])
        else:
            tokens.extend(x + 3 for x in b)
    while True:
        best_score, best_idx, best_id = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            j = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if j is not None and scores[j] > best_score:
                best_score, best_idx, best_id = scores[j], i, j
        if best_idx < 0:
            return tokens
        tokens[best_idx : best_idx + 2] = [best_id]


def _write_checkpoint(path: Path, header: list[int], weights: list[np.ndarray]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", *header))
        for w in weights:
            f.write(np.ascontiguousarray(w, dtype="<f4").tobytes())


def _random_llama2c(rng: np.random.Generator, dim: int, hidden: int, layers: int, heads: int,
                    kv_heads: int, vocab: int, seq_len: int, shared: bool
                    ) -> tuple[list[int], dict[str, np.ndarray], list[np.ndarray]]:
    """Random weights in llama2.c's names and the file's list of arrays in its order."""
    hd = dim // heads
    kvd = kv_heads * hd

    def r(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "tok": r(vocab, dim, scale=1.0), "rms_att": 1 + r(layers, dim, scale=0.1),
        "wq": r(layers, dim, dim), "wk": r(layers, kvd, dim), "wv": r(layers, kvd, dim),
        "wo": r(layers, dim, dim), "rms_ffn": 1 + r(layers, dim, scale=0.1),
        "w1": r(layers, hidden, dim), "w2": r(layers, dim, hidden), "w3": r(layers, hidden, dim),
        "rms_final": 1 + r(dim, scale=0.1),
    }
    freqs = np.zeros((seq_len, hd // 2), np.float32)
    order = [w["tok"], w["rms_att"], w["wq"], w["wk"], w["wv"], w["wo"], w["rms_ffn"], w["w1"],
             w["w2"], w["w3"], w["rms_final"], freqs, freqs]
    if not shared:
        w["wcls"] = r(vocab, dim)
        order.append(w["wcls"])
    header = [dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq_len]
    return header, w, order


def _reference_logits(w: dict[str, np.ndarray], ids: list[int], heads: int, kv_heads: int
                      ) -> np.ndarray:
    """llama2.c's ``forward`` in numpy (float64), with its interleaved-pair RoPE."""
    dim = w["tok"].shape[1]
    hd = dim // heads
    layers = w["wq"].shape[0]
    T = len(ids)

    def rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g

    def rope(x: np.ndarray) -> np.ndarray:  # x [T, H, hd]; pairs (2k, 2k+1) rotate by freq k
        freq = 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)
        ang = np.arange(T)[:, None] * freq[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    x = w["tok"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(layers):
        h = rms(x, w["rms_att"][layer])
        q = rope((h @ w["wq"][layer].T).reshape(T, heads, hd))
        k = rope((h @ w["wk"][layer].T).reshape(T, kv_heads, hd))
        v = (h @ w["wv"][layer].T).reshape(T, kv_heads, hd)
        rep = heads // kv_heads
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, dim)
        x = x + o @ w["wo"][layer].T
        h = rms(x, w["rms_ffn"][layer])
        g = h @ w["w1"][layer].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w["w3"][layer].T)) @ w["w2"][layer].T
    x = rms(x, w["rms_final"])
    return x @ w.get("wcls", w["tok"]).T


# ---------------------------------------------------------------- stories260K


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """A 260K-parameter model is fastest on one thread; on a busy machine OpenMP's idle workers
    make each tiny forward pass up to 50x slower. Restored afterwards."""
    before = magnet.get_num_threads()
    magnet.set_num_threads(1)
    yield
    magnet.set_num_threads(before)


@pytest.fixture(scope="module")
def stories(stories_dir: Path) -> magnet.formats.Loaded:
    return load_llama2c(stories_dir)


def test_stories_config(stories) -> None:
    c = stories.config
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == (
        512, 64, 5, 8, 4)
    assert (c.head_dim, c.intermediate_size, c.max_positions) == (8, 172, 512)
    assert c.tie_word_embeddings and "lm_head.weight" not in stories.tensors
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)
    assert stories.tensors["layers.4.w_down.weight"].shape == (64, 172)
    assert stories.tensors["layers.0.wk.weight"].shape == (32, 64)


def test_stories_greedy_matches_golden(stories, stories_dir: Path) -> None:
    golden_ids, golden_text = _read_golden(stories_dir / "greedy_golden.txt")
    model = _C.Model(stories.config.to_c(), stories.tensors)
    ids = _greedy(model, len(golden_ids))
    assert ids == golden_ids
    pieces, _, _ = _C.read_llama2c_tokenizer(str(stories_dir / "tok512.bin"), 512)
    assert _llama2c_piece_text(pieces, ids) == golden_text
    # Decoding drops the one leading space after BOS, as llama2.c prints it.
    assert stories.tokenizer.decode([1, *ids]) == golden_text.removeprefix(" ")


def test_stories_via_model_facade(stories_dir: Path) -> None:
    golden_ids, _ = _read_golden(stories_dir / "greedy_golden.txt")
    m = magnet.Model.from_pretrained(stories_dir)
    ids = [1]
    for _ in range(len(golden_ids)):
        ids.append(int(np.argmax(m.logits(ids)[-1])))
    assert ids[1:] == golden_ids
    # the checkpoint file plus an explicit tokenizer gives the same model
    m2 = magnet.Model.from_pretrained(stories_dir / "stories260K.bin",
                                      tokenizer=stories_dir / "tok512.bin")
    np.testing.assert_array_equal(m2.logits(ids[:9]), m.logits(ids[:9]))


# ---------------------------------------------------------------- tokenizer


def _gutenberg_lines(shared_data: Path, n: int) -> list[str]:
    d = shared_data / "text" / "gutenberg"
    files = sorted(d.glob("*.txt"))
    if not files:
        pytest.skip(f"no Gutenberg text in {d}")
    lines: list[str] = []
    per_file = max(1, n // len(files))
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").splitlines()
        picked = [ln for ln in text[200:] if ln.strip()][:per_file]
        lines.extend(picked)
    return lines


def test_tokenizer_matches_llama2c_encode(stories, stories_dir: Path, shared_data: Path) -> None:
    pieces, scores, max_len = _C.read_llama2c_tokenizer(str(stories_dir / "tok512.bin"), 512)
    assert max_len == max(len(p) for p in pieces)
    lines = _gutenberg_lines(shared_data, 400)
    assert len(lines) >= 300
    # a few multi-line chunks too: newlines go through byte fallback
    chunks = lines + ["\n".join(lines[i : i + 5]) for i in range(0, 50, 5)]
    chunks += ["", " ", "  two  spaces ", "café naïve 日本語 ~]", "<s> literal </s>", "\t\x00x"]
    # a typed "▁" is an ordinary character to llama2.c (its bytes), not a space
    chunks += ["a \u2581 b", "\u2581\u2581x", "x\u2581", "\u2581"]
    tok = stories.tokenizer
    batch = tok.encode_batch(chunks, add_bos=False)
    for text, ids in zip(chunks, batch, strict=True):
        assert ids == _llama2c_encode(text, pieces, scores), text
    assert tok.encode("Once upon a time")[0] == 1
    assert tok.encode("Once upon a time", add_bos=False) == _llama2c_encode(
        "Once upon a time", pieces, scores)


def test_tokenizer_round_trip(stories, shared_data: Path) -> None:
    tok = stories.tokenizer
    texts = _gutenberg_lines(shared_data, 100) + [
        "Lily and Tom went to the park.\nThey played all day!",
        " leading space", "trailing space ", "emoji 🙂 and ünïcödé", "", "a \u2581 b\u2581",
    ]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.encode(text, add_bos=False)) == text


# ---------------------------------------------------------------- synthetic checkpoints


@pytest.mark.parametrize("shared", [True, False])
def test_synthetic_matches_numpy_llama2c_forward(tmp_path: Path, shared: bool) -> None:
    rng = np.random.default_rng(7)
    heads, kv_heads = 4, 2
    header, w, order = _random_llama2c(rng, dim=32, hidden=48, layers=2, heads=heads,
                                       kv_heads=kv_heads, vocab=40, seq_len=16, shared=shared)
    path = tmp_path / "model.bin"
    _write_checkpoint(path, header, order)
    loaded = load_llama2c(path)
    assert loaded.tokenizer is None
    assert ("lm_head.weight" in loaded.tensors) == (not shared)
    assert loaded.config.tie_word_embeddings == shared
    ids = [int(i) for i in rng.integers(0, 40, size=13)]
    x = np.array([ids], dtype=np.int32)
    model = _C.Model(loaded.config.to_c(), loaded.tensors)
    _, logits = model.forward(x, np.ones_like(x, dtype=np.uint8), np.zeros_like(x), False, True)
    ref = _reference_logits(w, ids, heads, kv_heads)
    np.testing.assert_allclose(logits[0], ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- malformed input


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _C.read_llama2c(str(tmp_path / "nope.bin"))
    with pytest.raises(FileNotFoundError):
        _C.read_llama2c_tokenizer(str(tmp_path / "nope.bin"), 512)
    with pytest.raises(FileNotFoundError):
        load_llama2c(tmp_path / "nope.bin")


def test_truncated_and_padded_checkpoint(stories_dir: Path, tmp_path: Path) -> None:
    data = (stories_dir / "stories260K.bin").read_bytes()
    for size in (0, 10, 28, 1000, len(data) - 4, len(data) - 1):
        p = tmp_path / f"cut{size}.bin"
        p.write_bytes(data[:size])
        with pytest.raises(ValueError):
            _C.read_llama2c(str(p))
    p = tmp_path / "padded.bin"
    p.write_bytes(data + b"\0\0\0\0")
    with pytest.raises(ValueError, match="implies"):
        _C.read_llama2c(str(p))


@pytest.mark.parametrize(
    "header",
    [
        [-64, 172, 5, 8, 4, 512, 512],          # negative dim
        [64, 0, 5, 8, 4, 512, 512],             # zero hidden_dim
        [64, 172, -1, 8, 4, 512, 512],          # negative layers
        [64, 172, 5, 8, 4, 0, 512],             # zero vocab
        [64, 172, 5, 8, 4, -(2**31), 512],      # INT32_MIN vocab (cannot be negated)
        [64, 172, 5, 8, 4, 512, -5],            # negative seq_len
        [2**30, 2**30, 2**20, 8, 4, 2**30, 2**30],  # huge: would overflow naive size products
        [64, 172, 5, 7, 7, 512, 512],           # n_heads does not divide dim
        [64, 172, 5, 8, 3, 512, 512],           # n_kv_heads does not divide n_heads
        [64, 172, 5, 4, 8, 512, 512],           # more kv heads than heads
        [48, 172, 5, 16, 4, 512, 512],          # odd head size
        [0x616B3432, 1, 1, 1, 1, 1, 1],         # llama2.c version-1 magic "ak42" read as dim
    ],
)
def test_absurd_header(tmp_path: Path, header: list[int]) -> None:
    p = tmp_path / "bad.bin"
    p.write_bytes(struct.pack("<7i", *header) + b"\0" * 4096)
    with pytest.raises(ValueError):
        _C.read_llama2c(str(p))
    with pytest.raises(ValueError):
        load_llama2c(p)


def _tokenizer_bytes(pieces: list[bytes], max_len: int | None = None) -> bytes:
    out = struct.pack("<i", max_len if max_len is not None else max(map(len, pieces)))
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    good = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b"a", b"b", b"ab"]
    p = tmp_path / "tok.bin"
    p.write_bytes(_tokenizer_bytes(good))
    pieces, scores, max_len = _C.read_llama2c_tokenizer(str(p), len(good))
    assert pieces == good and scores == [-float(i) for i in range(6)] and max_len == 6

    cases = {
        "past_end": _tokenizer_bytes(good)[:-1],                       # last piece cut short
        "len_past_end": _tokenizer_bytes(good[:-1]) + struct.pack("<fi", 0.0, 1000) + b"ab",
        "negative_len": _tokenizer_bytes(good[:-1]) + struct.pack("<fi", 0.0, -3) + b"ab",
        "len_over_max": _tokenizer_bytes(good, max_len=1),
        "trailing": _tokenizer_bytes(good) + b"x",
        "empty": b"",
        "bad_max": struct.pack("<i", -1),
    }
    for name, blob in cases.items():
        q = tmp_path / f"{name}.bin"
        q.write_bytes(blob)
        with pytest.raises(ValueError):
            _C.read_llama2c_tokenizer(str(q), len(good))
    with pytest.raises(ValueError):
        _C.read_llama2c_tokenizer(str(p), len(good) + 1)  # more pieces than the file holds
    for bad_vocab in (0, -5, 2**30):
        with pytest.raises(ValueError):
            _C.read_llama2c_tokenizer(str(p), bad_vocab)


def test_directory_resolution(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    header, _, order = _random_llama2c(rng, dim=16, hidden=24, layers=1, heads=2, kv_heads=2,
                                       vocab=6, seq_len=8, shared=True)
    _write_checkpoint(tmp_path / "a.bin", header, order)
    (tmp_path / "tok6.bin").write_bytes(
        _tokenizer_bytes([b"<unk>", b"\n<s>\n", b"\n</s>\n", b" ", b"a", b" a"]))
    loaded = load_llama2c(tmp_path)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.encode("a a", add_bos=False) == [5, 5]
    _write_checkpoint(tmp_path / "b.bin", header, order)
    with pytest.raises(ValueError, match="exactly one"):
        load_llama2c(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_llama2c(tmp_path / "a.bin", tokenizer=tmp_path / "missing.bin")
