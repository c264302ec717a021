"""Seeded random damage to every checkpoint format: a mutated file either loads (and a short
forward then works or raises cleanly) or raises ValueError / OSError / MemoryError. Anything else
(KeyError, TypeError, IndexError, a tokenizers ``Exception``...) is a loader bug; a crash would
kill pytest outright. Each format gets at least 1,000 mutations of a small, valid base file."""

from __future__ import annotations

import json
import random
import shutil
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet import _C

ALLOWED = (ValueError, OSError, MemoryError)
MUTATIONS = 1000

# Values a hostile or corrupt file likes to put in a 4- or 8-byte integer field.
EXTREMES = [0, 1, 2, -1, 255, 65535, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32,
            2**63 - 1, 2**63, 2**64 - 1]


def mutate(data: bytes, rand: random.Random, hot: int,
           fields: list[tuple[int, int]] = ()) -> bytes:
    """1-3 damages, 85% of them in the first ``hot`` bytes (the header, where parsing is):
    bit flips, byte overwrites, truncation, insertion, deletion, and extreme integers written
    over a 4/8-byte field (a known field offset when ``fields`` are given)."""
    d = bytearray(data)
    for _ in range(rand.randint(1, 3)):
        hi = hot if rand.random() < 0.85 else len(d) + 1
        pos = min(rand.randrange(0, max(hi, 1)), len(d))
        kind = rand.random()
        if kind < 0.25 and pos < len(d):
            d[pos] ^= 1 << rand.randrange(8)
        elif kind < 0.35 and pos < len(d):
            d[pos] = rand.randrange(256)
        elif kind < 0.45:
            del d[pos:]
        elif kind < 0.55:
            d[pos:pos] = bytes(rand.randrange(256) for _ in range(rand.randint(1, 8)))
        elif kind < 0.65:
            del d[pos:pos + rand.randint(1, 8)]
        else:
            if fields and rand.random() < 0.8:
                pos, size = rand.choice(fields)
            else:
                size = rand.choice((4, 8))
            value = rand.choice(EXTREMES) & ((1 << (8 * size)) - 1)
            d[pos:pos + size] = value.to_bytes(size, "little")
    return bytes(d)


class Tally:
    """Outcome counts, and every disallowed exception (reported together at the end)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[str] = Counter()
        self.bad: list[str] = []

    def run(self, i: int, fn: Callable[[], str]) -> None:
        try:
            self.counts[fn()] += 1
        except ALLOWED as e:
            self.counts["error:" + type(e).__name__] += 1
            assert str(e), f"{self.name} mutant {i}: {type(e).__name__} with an empty message"
        except Exception as e:  # noqa: BLE001 - collecting the leaks is the point
            self.bad.append(f"mutant {i}: {type(e).__name__}: {e}"[:300])

    def check(self) -> None:
        total = sum(self.counts.values())
        print(f"\n{self.name}: {total} outcomes, {dict(sorted(self.counts.items()))}")
        assert not self.bad, f"{self.name}: disallowed exceptions:\n" + "\n".join(self.bad[:20])
        assert sum(self.counts.values()) >= MUTATIONS


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread start-up would dominate each 3-token forward, so run on one."""
    before = magnet.get_num_threads()
    magnet.set_num_threads(1)
    yield
    magnet.set_num_threads(before)


def forward_ok(model: magnet.Model) -> str:
    """A 3-token forward that must either work (finite shape) or raise an allowed error."""
    try:
        out = model.logits(np.array([0, 1, 2]))
    except ALLOWED as e:
        assert str(e)
        return "loaded, forward refused"
    assert out.shape == (3, model.config.vocab_size) and out.dtype == np.float32
    return "loaded, forward ran"


# ---------------------------------------------------------------- GGUF

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import quantize  # noqa: E402

_K_BYTES = {QT.Q4_K: (144, (0, 2)), QT.Q6_K: (210, (208,))}


def _k_blocks(rng: np.random.Generator, qtype: QT, rows: int, cols: int) -> np.ndarray:
    size, scale_offsets = _K_BYTES[qtype]
    n = rows * cols // 256
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in scale_offsets:
        scales = rng.uniform(-0.05, 0.05, n).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, cols // 256 * size)


def write_tiny_gguf(path: Path) -> None:
    """A 2-layer LLaMA (D=32, 4 heads, 2 KV heads, F=256, V=64) mixing F32, F16, BF16, Q8_0,
    Q4_0, Q4_1, Q4_K and Q6_K tensors, with a SentencePiece-style vocabulary."""
    rng = np.random.default_rng(0)
    D, F, V, KV = 32, 256, 64, 16

    def x(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_block_count(2)
    w.add_feed_forward_length(F)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    tokens = ["<unk>", "<s>", "</s>"] + [chr(ord("a") + i) for i in range(26)]
    tokens += ["▁" + chr(ord("a") + i) for i in range(26)] + ["ab", "bc", "cd", "▁ab", "▁bc",
                                                              "de", "ef", "▁de", "fg"]
    assert len(tokens) == V
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([float(-i) for i in range(V)])
    w.add_token_types([3, 3, 3] + [1] * (V - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", x(V, D).astype(np.float16), raw_dtype=QT.F16)
    for layer, down in ((0, QT.Q4_K), (1, QT.Q6_K)):
        p = f"blk.{layer}."
        w.add_tensor(p + "attn_norm.weight", 1 + x(D), raw_dtype=QT.F32)
        w.add_tensor(p + "attn_q.weight", quantize(x(D, D), QT.Q8_0), raw_dtype=QT.Q8_0)
        w.add_tensor(p + "attn_k.weight", quantize(x(KV, D), QT.Q4_0), raw_dtype=QT.Q4_0)
        w.add_tensor(p + "attn_v.weight", quantize(x(KV, D), QT.Q4_1), raw_dtype=QT.Q4_1)
        w.add_tensor(p + "attn_output.weight", quantize(x(D, D), QT.BF16), raw_dtype=QT.BF16)
        w.add_tensor(p + "ffn_norm.weight", 1 + x(D), raw_dtype=QT.F32)
        w.add_tensor(p + "ffn_gate.weight", quantize(x(F, D), QT.Q8_0), raw_dtype=QT.Q8_0)
        w.add_tensor(p + "ffn_up.weight", x(F, D).astype(np.float16), raw_dtype=QT.F16)
        w.add_tensor(p + "ffn_down.weight", _k_blocks(rng, down, D, F), raw_dtype=down)
    w.add_tensor("output_norm.weight", 1 + x(D), raw_dtype=QT.F32)
    w.add_tensor("output.weight", x(V, D), raw_dtype=QT.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_int_fields(path: Path) -> tuple[list[tuple[int, int]], int]:
    """(offset, size) of every scalar 4/8-byte field (counts, lengths, types, dims, offsets) and
    the start of the tensor data, from the gguf package's reader."""
    r = gguf.GGUFReader(str(path))
    out = []
    for field in [*r.fields.values(), *(t.field for t in r.tensors)]:
        off = field.offset
        for part in field.parts:
            if part.size == 1 and part.nbytes in (4, 8):
                out.append((off, part.nbytes))
            off += part.nbytes
    return out, int(r.data_offset)


def test_gguf_mutations(tmp_path: Path) -> None:
    base_path = tmp_path / "base.gguf"
    write_tiny_gguf(base_path)
    base = base_path.read_bytes()
    model = magnet.Model.from_pretrained(base_path)
    assert forward_ok(model) == "loaded, forward ran"
    assert model.tokenizer is not None and model.tokenizer.encode("abc")
    fields, data_start = gguf_int_fields(base_path)
    assert len(fields) > 50

    rand = random.Random(20240601)
    target = tmp_path / "mutant.gguf"
    tally = Tally("GGUF")

    def attempt() -> str:
        _C.read_gguf(str(target))
        m = magnet.Model.from_pretrained(target)
        if m.tokenizer is not None:
            m.tokenizer.encode("abc de")
        return forward_ok(m)

    for i in range(MUTATIONS):
        target.write_bytes(mutate(base, rand, data_start, fields))
        tally.run(i, attempt)
    tally.check()


def test_gguf_names_in_errors_are_escaped(tmp_path: Path) -> None:
    """Regression (found by the mutations above): a tensor name or metadata key that is not
    UTF-8 made the error message undecodable, so the caller got a bare UnicodeDecodeError
    ("can't decode byte 0xb6 in position 63") instead of the reader's message."""
    name = b"\xb6lk.0\xff"
    bad_dims = (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", len(name)) + name
                + struct.pack("<I", 9) + b"\0" * 64)
    path = tmp_path / "name.gguf"
    path.write_bytes(bad_dims)
    with pytest.raises(ValueError, match=r"tensor '\\xb6lk.0\\xff' has 9 dimensions") as e:
        _C.read_gguf(str(path))
    assert type(e.value) is ValueError
    bad_key = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2) + b"k\xc3"
               + struct.pack("<I", 99) + b"\0" * 16)
    path.write_bytes(bad_key)
    with pytest.raises(ValueError, match=r"unknown type 99 \(metadata key 'k\\xc3'\)") as e:
        magnet.Model.from_pretrained(path)
    assert type(e.value) is ValueError


def test_safetensors_long_name_cut_on_a_character(tmp_path: Path) -> None:
    """Regression: a tensor name is shown up to 200 bytes; cutting inside a UTF-8 character
    made the message undecodable (UnicodeDecodeError instead of the reader's ValueError)."""
    name = "a" * 199 + "\u00e9tape"
    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4],
                                "bogus": 1}}, ensure_ascii=False).encode()
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(ValueError, match="has an unexpected or repeated key 'bogus'") as e:
        _C.read_safetensors(str(path))
    assert type(e.value) is ValueError


# ---------------------------------------------------------------- llama2.c


def tiny_llama2c(path: Path, *, dim=16, hidden=32, layers=2, heads=2, kv_heads=1, vocab=40,
                 seq=16, shared=True, seed=0) -> None:
    """A llama2.c version-0 checkpoint (run.c's layout) with random weights."""
    rng = np.random.default_rng(seed)
    hd = dim // heads
    kd = kv_heads * hd
    sizes = [vocab * dim, layers * dim, layers * dim * dim, layers * kd * dim,
             layers * kd * dim, layers * dim * dim, layers * dim, layers * hidden * dim,
             layers * dim * hidden, layers * hidden * dim, dim, seq * hd]
    if not shared:
        sizes.append(vocab * dim)
    header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads,
                         vocab if shared else -vocab, seq)
    floats = (rng.standard_normal(sum(sizes)) * 0.2).astype("<f4")
    path.write_bytes(header + floats.tobytes())


TOKENIZER_PIECES = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" "] + [bytes([c]) for c in b"abcdefgh"] \
    + [b" a", b" b", b"ab", b"bc", b"cd", b"de", b" ab", b"abc", b"\xc3\xa9", b"ef", b"gh",
       b" c", b" d", b"fg", b"hi", b"i", b"j", b"k", b"l", b" l", b"kl", b"jk", b" j", b"lm",
       b"m", b"n", b"o", b"no"]


def tiny_llama2c_tokenizer(path: Path) -> list[tuple[int, int]]:
    """A llama2.c tokenizer.bin of 40 pieces; returns its int fields' (offset, size)."""
    assert len(TOKENIZER_PIECES) == 40 and len(set(TOKENIZER_PIECES)) == 40
    out = bytearray(struct.pack("<i", max(len(p) for p in TOKENIZER_PIECES)))
    fields = [(0, 4)]
    for i, piece in enumerate(TOKENIZER_PIECES):
        fields.append((len(out) + 4, 4))
        out += struct.pack("<fi", -float(i), len(piece)) + piece
    path.write_bytes(bytes(out))
    return fields


LLAMA2C_HEADER_FIELDS = [(4 * i, 4) for i in range(7)]


def test_llama2c_checkpoint_mutations(tmp_path: Path) -> None:
    bases = []
    for k, (shared, kv) in enumerate(((True, 1), (False, 2))):
        p = tmp_path / f"base{k}.bin"
        tiny_llama2c(p, shared=shared, kv_heads=kv, seed=k)
        assert forward_ok(magnet.Model.from_pretrained(p)) == "loaded, forward ran"
        bases.append(p.read_bytes())
    rand = random.Random(7)
    mutant_dir = tmp_path / "m"
    mutant_dir.mkdir()
    target = mutant_dir / "model.bin"  # alone in its directory: no tokenizer looked up
    tally = Tally("llama2.c checkpoint")

    def attempt() -> str:
        _C.read_llama2c(str(target))
        return forward_ok(magnet.Model.from_pretrained(target))

    for i in range(MUTATIONS):
        base = bases[i % 2]
        target.write_bytes(mutate(base, rand, 28, LLAMA2C_HEADER_FIELDS))
        tally.run(i, attempt)
    tally.check()


def test_llama2c_tokenizer_mutations(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.bin"
    tiny_llama2c(ckpt)
    base_path = tmp_path / "tok_base.bin"
    fields = tiny_llama2c_tokenizer(base_path)
    base = base_path.read_bytes()
    model = magnet.Model.from_pretrained(ckpt, tokenizer=base_path)
    assert model.tokenizer is not None and model.tokenizer.encode("abc de")
    rand = random.Random(11)
    target = tmp_path / "tok_mutant.bin"
    tally = Tally("llama2.c tokenizer")

    def attempt() -> str:
        _C.read_llama2c_tokenizer(str(target), 40)
        m = magnet.Model.from_pretrained(ckpt, tokenizer=target)
        ids = m.tokenizer.encode("abc de\u00e9 kl")
        m.tokenizer.decode(ids)
        return forward_ok(m)

    for i in range(MUTATIONS):
        target.write_bytes(mutate(base, rand, len(base), fields))
        tally.run(i, attempt)
    tally.check()


# ---------------------------------------------------------------- Hugging Face directories

_JSON_VALUES = [0, -1, 1, 3, 2**31 - 1, 2**63 - 1, 2**64, -(2**63), 0.5, 1e308, -1e308,
                float("nan"), float("inf"), None, "", "x", "bert", "yarn", True, False, [], [1, 2],
                {}, {"a": 1}, {"rope_type": "linear"}, {"type": "yarn", "factor": 2.0},
                {"rope_type": "llama3", "factor": 8.0}, "../model.safetensors",
                "nonexistent.safetensors", "model-00001-of-00002.safetensors"]
_EXTRA_KEYS = ["rope_scaling", "rope_parameters", "head_dim", "sliding_window",
               "use_sliding_window", "hidden_act", "activation_function", "n_inner",
               "tie_word_embeddings", "model_type", "eos_token_id", "num_key_value_heads",
               "weight_map", "metadata"]


def mutate_json(text: bytes, rand: random.Random) -> bytes:
    """Half the time a structural edit (a value replaced by a hostile one, a key removed or
    added, possibly inside a nested object), else byte-level damage."""
    if rand.random() < 0.5:
        return mutate(text, rand, len(text))
    obj = json.loads(text)
    for _ in range(rand.randint(1, 2)):
        node = obj
        # descend into a nested object now and then (rope_scaling, weight_map)
        nested = [k for k, v in node.items() if isinstance(v, dict) and v]
        if nested and rand.random() < 0.4:
            node = node[rand.choice(nested)]
        keys = list(node)
        op = rand.random()
        if op < 0.6 and keys:
            node[rand.choice(keys)] = rand.choice(_JSON_VALUES)
        elif op < 0.75 and keys:
            del node[rand.choice(keys)]
        else:
            node[rand.choice(_EXTRA_KEYS)] = rand.choice(_JSON_VALUES)
    if rand.random() < 0.05:
        obj = rand.choice([[], None, 3, "x", [obj]])
    return json.dumps(obj).encode()


def test_huggingface_directory_mutations(tmp_path: Path) -> None:
    hf_models = pytest.importorskip("tests.hf_models")
    bases: list[dict[str, bytes]] = []
    for name in ("llama", "gpt2", "qwen2"):
        d = tmp_path / f"base_{name}"
        model = hf_models.make_checkpoint(name, d)
        if name == "llama":  # re-save sharded, so the index json is exercised too
            shutil.rmtree(d)
            model.save_pretrained(d, max_shard_size="40KB")
            assert (d / "model.safetensors.index.json").is_file()
        assert forward_ok(magnet.Model.from_pretrained(d)) == "loaded, forward ran"
        bases.append({p.name: p.read_bytes() for p in d.iterdir() if p.is_file()})

    rand = random.Random(99)
    target = tmp_path / "mutant"
    tally = Tally("Hugging Face directory")
    which: Counter[str] = Counter()

    def attempt() -> str:
        return forward_ok(magnet.Model.from_pretrained(target))

    for i in range(MUTATIONS):
        files = dict(bases[i % len(bases)])
        if target.exists():
            shutil.rmtree(target)
        target.mkdir()
        # the files magnet reads: config.json, the index, the safetensors (not generation_config)
        weights = sorted(n for n in files if n.endswith(".safetensors"))
        index = [n for n in files if n.endswith(".index.json")]
        pick = rand.random()
        if pick < 0.45:
            name = "config.json"
        elif pick < 0.65 and index:
            name = index[0]
        else:
            name = rand.choice(weights)
        if name.endswith(".json"):
            files[name] = mutate_json(files[name], rand)
        else:
            hot = 8 + struct.unpack("<Q", files[name][:8])[0]
            files[name] = mutate(files[name], rand, hot, [(0, 8)])
        which[name.split("-")[0]] += 1
        for fname, content in files.items():
            (target / fname).write_bytes(content)
        if name.endswith(".safetensors"):
            tally.run(i, lambda p=target / name: (_C.read_safetensors(str(p)), "read")[1])
        tally.run(i, attempt)
    print(f"\nHugging Face files mutated: {dict(which)}")
    tally.check()
