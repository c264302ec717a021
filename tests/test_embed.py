"""Sentence and token embeddings against references built from ``Model.hidden_states``; the
sentence-transformers ``encode`` surface; bad input; concurrent calls on one model."""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import pytest

import magnet
from magnet.embedding import DEFAULT_INSTRUCTION, quantize
from tests.hf_models import make_checkpoint
from tests.tiny_text import word_tokenizer

TEXTS = ["Once upon a time", "Lily saw a big red ball in the park.", "Tom", "",
         "The sun was hot and the birds were singing all day long."]


@pytest.fixture(scope="module")
def stories(stories_dir):
    return magnet.Model.from_pretrained(stories_dir)


def reference_sentence(m, text, pooling, instruction=DEFAULT_INSTRUCTION):
    tok = m.tokenizer
    head = [tok.bos_id] if tok.bos_id is not None else []
    head += tok.encode(instruction, add_bos=False) if instruction else []
    ids = head + tok.encode(text, add_bos=False) + [tok.eos_id]
    h = m.hidden_states(np.array(ids), roles=np.zeros(len(ids), np.uint8))
    return h[-1] if pooling == "last" else h[len(head):].mean(0)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_sentence_embeddings_match_reference(stories, pooling):
    got = stories.embed(TEXTS, pooling=pooling, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), stories.config.hidden_size)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(got[i], reference_sentence(stories, t, pooling), atol=1e-4)
    np.testing.assert_allclose(stories.embed(TEXTS, pooling=pooling, batch_size=32), got,
                               atol=1e-5)
    single = stories.embed(TEXTS[1], pooling=pooling)
    assert single.shape == (stories.config.hidden_size,)
    np.testing.assert_allclose(single, got[1], atol=1e-5)
    unit = stories.embed(TEXTS, pooling=pooling, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, got / np.linalg.norm(got, axis=1, keepdims=True), atol=1e-5)
    plain = stories.embed(TEXTS[1], pooling=pooling, instruction=None)
    np.testing.assert_allclose(plain, reference_sentence(stories, TEXTS[1], pooling, None),
                               atol=1e-4)


def test_token_embeddings_match_reference(stories):
    out = stories.embed(TEXTS, level="token", batch_size=2)
    tok = stories.tokenizer
    for t, r in zip(TEXTS, out, strict=True):
        ids = tok.encode(t, add_bos=False)
        assert r.ids == ids and len(r.tokens) == len(ids) == len(r.offsets)
        assert r.vectors.shape == (len(ids), stories.config.hidden_size)
        full = [tok.bos_id] + ids
        h = stories.hidden_states(np.array(full), roles=np.zeros(len(full), np.uint8))
        np.testing.assert_allclose(r.vectors, h[:-1], atol=1e-4)  # token t <- state at t-1
        for (a, b), piece in zip(r.offsets, r.tokens, strict=True):
            assert 0 <= a <= b <= len(t)
            if piece.startswith("\u2581") and b > a:
                assert t[a:b].strip() == piece.lstrip("\u2581")
    # pieces show SentencePiece's "▁" (the llama2.c tokenizer holds a space as U+FDD0 inside)
    assert any(p.startswith("\u2581") for r in out for p in r.tokens)
    assert not any("\ufdd0" in p for r in out for p in r.tokens)
    enc = stories.encode(TEXTS[:2], output_value="token_embeddings")
    np.testing.assert_allclose(enc[1], out[1].vectors, atol=1e-6)


def test_max_length(stories):
    long = "Lily saw a big red ball in the park and she ran to get it."
    head = 1 + len(stories.tokenizer.encode(DEFAULT_INSTRUCTION, add_bos=False))
    n = len(stories.tokenizer.encode(long, add_bos=False))
    limit = head + 5 + 1
    assert n > 5
    cut = stories.embed(long, max_length=limit)
    ids = stories.tokenizer.encode(long, add_bos=False)[:5]
    text5 = stories.tokenizer.decode(ids)
    ref = reference_sentence(stories, text5, "last")
    if stories.tokenizer.encode(text5, add_bos=False) == ids:
        np.testing.assert_allclose(cut, ref, atol=1e-4)
    with pytest.raises(ValueError, match="max_length"):
        stories.embed(long, max_length=limit, truncate=False)
    tokens = stories.embed(long, level="token", max_length=4)
    assert len(tokens.ids) == 3
    with pytest.raises(ValueError, match="max_length"):
        stories.embed("x", max_length=head - 1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_last_pooling_equals_full_states(tmp_path, arch):
    """Last-token pooling runs the last layer on each text's last row only (csrc/model/embed.c);
    the vectors must equal the last rows of the full hidden states, LoRA attached, padding in
    the batch."""
    make_checkpoint(arch, tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    m.tokenizer = word_tokenizer()
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(5, 60, n)) for n in (3, 9, 1, 14, 6)]
    m.adapt(texts * 4, steps=2, batch_size=4, seq_len=16, lr=1e-2, progress=False)
    got = m.embed(texts, pooling="last", instruction="w40 w41", batch_size=3)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(got[i], reference_sentence(m, t, "last", "w40 w41"), atol=1e-4)


def test_no_bos_tokenizer_gpt2(tmp_path):
    make_checkpoint("gpt2", tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    m.tokenizer = word_tokenizer(bos_id=None, eos_id=0)
    texts = ["w5 w6 w7", "w9"]
    got = m.embed(texts, instruction="w40 w41", pooling="mean")
    ids = [40, 41, 5, 6, 7, 0]
    h = m.hidden_states(np.array(ids), roles=np.zeros(6, np.uint8))
    np.testing.assert_allclose(got[0], h[2:].mean(0), atol=1e-4)
    tok = m.embed("w5 w6", level="token")
    h = m.hidden_states(np.array([0, 5, 6]), roles=np.zeros(3, np.uint8))  # EOS as BOS
    np.testing.assert_allclose(tok.vectors, h[:2], atol=1e-4)
    assert tok.tokens == ["w5", "w6"] and tok.offsets == [(0, 2), (3, 5)]


def test_encode_sentence_transformers_surface(stories):
    e = stories.encode(TEXTS, batch_size=2, show_progress_bar=False, normalize_embeddings=True,
                       convert_to_tensor=False, task_name="STS")  # extra kwargs are ignored
    np.testing.assert_allclose(e, stories.embed(TEXTS, normalize=True), atol=1e-6)
    assert stories.encode("Tom").shape == (stories.config.hidden_size,)
    as_list = stories.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(TEXTS)
    p = stories.encode(TEXTS[:1], prompt="Represent: ")
    np.testing.assert_allclose(p[0], reference_sentence(stories, TEXTS[0], "last", "Represent: "),
                               atol=1e-4)
    with pytest.raises(ValueError, match="output_value"):
        stories.encode(TEXTS, output_value="embeddings")


# sentence-transformers 6.2 behaviour of SentenceTransformer.encode, written down as expected
# values (no sentence-transformers dependency in the tests).
ST_QUANT_IN = np.array([[-1, 0.5, 2, 0.1, -0.3, 0.7, 0.2, -0.9, 1.5],
                        [1, 0, 2, -0.2, 0.4, -0.6, 0.3, 0.8, -1.1],
                        [0, 1, -2, 0.3, 0.0, 0.2, -0.4, 0.5, 0.9]], np.float32)
ST_QUANT_OUT = {  # sentence_transformers.quantize_embeddings(ST_QUANT_IN, precision)
    "int8": [[-128, -1, 126, 25, -128, 127, 90, -128, 127],
             [126, -128, 126, -128, 127, -128, 127, 127, -128],
             [-1, 126, -128, 126, -19, 28, -128, 81, 68]],
    "uint8": [[0, 127, 254, 153, 0, 255, 218, 0, 255], [254, 0, 254, 0, 255, 0, 255, 255, 0],
              [127, 254, 0, 254, 109, 156, 0, 209, 196]],
    "binary": [[-10, 0], [43, -128], [-43, 0]],
    "ubinary": [[118, 128], [171, 0], [85, 128]],
}
ST_QUANT_DTYPE = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


@pytest.mark.parametrize("precision", sorted(ST_QUANT_OUT))
def test_quantize_matches_sentence_transformers(precision):
    got = quantize(ST_QUANT_IN, precision)
    assert got.dtype == ST_QUANT_DTYPE[precision]
    np.testing.assert_array_equal(got, ST_QUANT_OUT[precision])


def test_encode_truncate_dim(stories):
    D = stories.config.hidden_size
    full = stories.embed(TEXTS)
    got = stories.encode(TEXTS, truncate_dim=16)
    assert got.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(got, full[:, :16], atol=1e-6)
    unit = stories.encode(TEXTS, truncate_dim=16, normalize_embeddings=True)  # truncate first
    np.testing.assert_allclose(unit, full[:, :16] / np.linalg.norm(full[:, :16], axis=1,
                                                                   keepdims=True), atol=1e-5)
    assert stories.encode("Tom", truncate_dim=5).shape == (5,)
    assert stories.encode(TEXTS, truncate_dim=D).shape == (len(TEXTS), D)
    tok = stories.encode(TEXTS[:2], output_value="token_embeddings", truncate_dim=8)
    assert tok[0].shape[1] == D  # token embeddings are not truncated
    for bad in (0, -1, D + 1):
        with pytest.raises(ValueError, match="truncate_dim"):
            stories.encode(TEXTS, truncate_dim=bad)
    for bad in (1.5, True, "8"):
        with pytest.raises(TypeError, match="truncate_dim"):
            stories.encode(TEXTS, truncate_dim=bad)


def test_encode_precision(stories):
    e = stories.encode(TEXTS, normalize_embeddings=True)
    ub = stories.encode(TEXTS, normalize_embeddings=True, precision="ubinary")
    assert ub.dtype == np.uint8 and ub.shape == (len(TEXTS), stories.config.hidden_size // 8)
    np.testing.assert_array_equal(np.unpackbits(ub, axis=1).astype(bool), e > 0)
    b = stories.encode(TEXTS, normalize_embeddings=True, precision="binary")
    np.testing.assert_array_equal(b, (ub.astype(np.int16) - 128).astype(np.int8))
    u8 = stories.encode(TEXTS, precision="uint8", truncate_dim=24)
    f = stories.encode(TEXTS, truncate_dim=24)
    lo, hi = f.min(0), f.max(0)
    assert u8.dtype == np.uint8 and u8.shape == f.shape
    np.testing.assert_array_equal(u8.argmin(0), f.argmin(0))
    np.testing.assert_array_equal(u8.min(0), 0)
    assert (u8.max(0) >= 254).all()  # each dimension's [min, max] spans the 256 buckets
    np.testing.assert_allclose(u8, (f - lo) / ((hi - lo) / 255), atol=1.01)
    i8 = stories.encode(TEXTS, precision="int8", truncate_dim=24)
    np.testing.assert_array_equal(i8, (u8.astype(np.int16) - 128).astype(np.int8))
    assert stories.encode(TEXTS, precision=None).dtype == np.float32
    with pytest.raises(ValueError, match="single embedding"):  # as sentence-transformers
        stories.encode(TEXTS[0], precision="int8")
    assert stories.encode(TEXTS[0], precision="ubinary").shape == (ub.shape[1],)
    tok = stories.encode(TEXTS[:2], output_value="token_embeddings", precision="uint8")
    allv = np.concatenate(stories.encode(TEXTS[:2], output_value="token_embeddings"))
    assert all(t.dtype == np.uint8 for t in tok)  # one set of buckets for all texts' tokens
    np.testing.assert_array_equal(np.concatenate(tok), quantize(allv, "uint8"))
    for bad in ("fp16", "float16", "bf16"):
        with pytest.raises(ValueError, match="ubinary"):
            stories.encode(TEXTS, precision=bad)
    with pytest.raises(ValueError, match="output_value"):
        stories.encode(TEXTS, precision="int8", output_value=None)


def test_encode_convert_to_tensor(stories, monkeypatch):
    torch = pytest.importorskip("torch")
    t = stories.encode(TEXTS, convert_to_tensor=True, convert_to_numpy=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), stories.embed(TEXTS), atol=1e-6)
    assert stories.encode("Tom", convert_to_tensor=True).shape == (stories.config.hidden_size,)
    q = stories.encode(TEXTS, convert_to_tensor=True, precision="int8")
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int8
    assert tuple(stories.encode([], convert_to_tensor=True).shape) == (0,
                                                                        stories.config.hidden_size)
    tok = stories.encode(TEXTS[:2], output_value="token_embeddings", convert_to_tensor=True)
    assert all(isinstance(x, torch.Tensor) for x in tok)


def test_encode_convert_to_tensor_without_torch(stories, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match="PyTorch"):
        stories.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(stories.encode(TEXTS[:1]), np.ndarray)


def test_encode_empty(stories):
    D = stories.config.hidden_size
    e = stories.encode([])
    assert isinstance(e, np.ndarray) and e.dtype == np.float32 and e.shape == (0, D)
    assert stories.encode((), truncate_dim=8).shape == (0, 8)
    assert stories.encode(np.array([], dtype=str)).shape == (0, D)
    assert stories.encode([], convert_to_numpy=False) == []
    assert stories.encode([], output_value="token_embeddings") == []
    assert stories.encode([], output_value=None) == []
    assert stories.encode([], precision="ubinary").shape == (0, D // 8)
    with pytest.raises(ValueError, match="empty"):
        stories.embed([])


def test_encode_output_value_none(stories):
    out = stories.encode(TEXTS, output_value=None, truncate_dim=12, normalize_embeddings=True)
    sent = stories.embed(TEXTS)
    tok = stories.embed(TEXTS, level="token")
    assert isinstance(out, list) and len(out) == len(TEXTS)
    for d, s, t in zip(out, sent, tok, strict=True):
        assert set(d) == {"input_ids", "attention_mask", "token_embeddings", "sentence_embedding"}
        # as sentence-transformers: truncated, but normalize_embeddings is not applied here
        np.testing.assert_allclose(d["sentence_embedding"], s[:12], atol=1e-6)
        np.testing.assert_allclose(d["token_embeddings"], t.vectors, atol=1e-6)
        np.testing.assert_array_equal(d["input_ids"], t.ids)
        np.testing.assert_array_equal(d["attention_mask"], np.ones(len(t.ids)))
    one = stories.encode(TEXTS[1], output_value=None)
    assert isinstance(one, dict) and one["sentence_embedding"].shape == (sent.shape[1],)


@pytest.mark.parametrize("prompt", [None, "Represent: "])
def test_encode_output_value_none_truncates_both_alike(stories, prompt):
    """With truncation, the token ids and vectors beside a sentence embedding are the text
    tokens that embedding saw (39 were listed where the embedding had used 11)."""
    text = " ".join(["Once upon a time there was a little dog who loved the sun."] * 6)
    d = stories.encode(text, output_value=None, max_length=40, prompt=prompt)
    kw = {} if prompt is None else {"instruction": prompt}
    np.testing.assert_array_equal(d["sentence_embedding"], stories.embed(text, max_length=40, **kw))
    ids = stories.tokenizer.encode(text, add_bos=False, add_eos=False)
    head = stories.tokenizer.encode(prompt or DEFAULT_INSTRUCTION, add_bos=False, add_eos=False)
    assert d["input_ids"].tolist() == ids[:40 - len(head) - 2]  # BOS, instruction, EOS
    assert len(d["token_embeddings"]) == len(d["input_ids"])


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_sliding_window_model_truncates_to_its_window(tmp_path, arch):
    """max_length defaults to the window where that is shorter than the positions, as generate
    and adapt already did: a 100-token text on a 64-token window failed with a ValueError
    instead of being truncated (any long document on Mistral-7B under MTEB)."""
    make_checkpoint(arch, tmp_path)
    if arch == "qwen2":  # Qwen2 with use_sliding_window on every layer, window 48
        import json

        cfg = json.loads((tmp_path / "config.json").read_text())
        cfg.update(use_sliding_window=True, sliding_window=48, max_window_layers=0)
        cfg.pop("layer_types", None)
        (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = magnet.Model.from_pretrained(tmp_path)
    m.tokenizer = word_tokenizer()
    window = m.config.sliding_window
    assert 0 < window < m.config.max_positions
    text = " ".join(f"w{30 + i % 60}" for i in range(100))
    np.testing.assert_array_equal(m.embed(text), m.embed(text, max_length=window))
    assert len(m.embed(text, level="token").ids) == window - 1
    assert m.encode([text]).shape == (1, m.config.hidden_size)
    with pytest.raises(ValueError, match="more than max_length"):
        m.embed(text, truncate=False)


def test_encode_token_embeddings_not_normalized(stories):
    """sentence-transformers applies normalize_embeddings to sentence embeddings only."""
    plain = stories.encode(TEXTS[:2], output_value="token_embeddings")
    norm = stories.encode(TEXTS[:2], output_value="token_embeddings", normalize_embeddings=True)
    for a, b in zip(plain, norm, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(np.linalg.norm(b, axis=1), 1.0)


def test_encode_keyword_arguments(stories):
    ref = stories.encode(TEXTS[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = stories.encode(TEXTS[:2], prompt_name="query", task_name="STS", device="cpu",
                             prompt_type=None, chunk_size=4)
    np.testing.assert_array_equal(got, ref)
    with pytest.warns(UserWarning, match="normalise_embeddings"):
        stories.encode(TEXTS[:2], normalise_embeddings=True)
    np.testing.assert_allclose(stories.encode(TEXTS[:2], pooling="mean"),
                               stories.embed(TEXTS[:2], pooling="mean"), atol=1e-6)


def test_no_specials_empty_text(tmp_path):
    """Neither BOS nor EOS, no instruction: an empty text has no token to embed."""
    make_checkpoint("llama", tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    m.tokenizer = word_tokenizer(bos_id=None, eos_id=None)
    for texts, i in (([""], 0), (["w5", ""], 1), (["", "w5"], 0)):
        with pytest.raises(ValueError, match=f"text {i} has no tokens"):
            m.embed(texts, instruction=None)
    got = m.embed(["w5 w6", ""], instruction="w40", pooling="mean")
    h = m.hidden_states(np.array([5, 6]), roles=np.zeros(2, np.uint8))
    assert got.shape == (2, m.config.hidden_size)
    np.testing.assert_allclose(m.embed("w5 w6", instruction=None, pooling="mean"), h.mean(0),
                               atol=1e-4)


def test_any_sized_indexable_collection_of_texts(stories):
    """Like sentence-transformers: a Sequence that is not a list (UserList, a read-only
    column such as a pandas Series or a datasets column) was refused."""
    import collections

    class Column:  # what a dataframe column offers: a length, indexing, iteration
        def __init__(self, values):
            self.values = values

        def __len__(self):
            return len(self.values)

        def __getitem__(self, i):
            return self.values[i]

    want = stories.embed(TEXTS)
    np.testing.assert_array_equal(stories.embed(collections.UserList(TEXTS)), want)
    np.testing.assert_array_equal(stories.embed(Column(TEXTS)), want)
    np.testing.assert_array_equal(stories.encode(Column(TEXTS)), stories.encode(TEXTS))
    for bad in (iter(TEXTS), {"a": 1}, b"bytes", np.array([TEXTS, TEXTS])):
        with pytest.raises(TypeError, match="texts must be a str"):
            stories.embed(bad)


def test_a_bad_item_is_named_by_its_index(stories):
    texts = [f"text {i}" for i in range(50)]
    for bad in (None, float("nan"), b"x"):
        texts[37] = bad
        with pytest.raises(TypeError, match="at index 37"):
            stories.embed(texts)


def test_bad_input(stories):
    with pytest.raises(ValueError, match="empty"):
        stories.embed([])
    with pytest.raises(TypeError):
        stories.embed(["a", None])
    with pytest.raises(TypeError):
        stories.embed(5)
    with pytest.raises(ValueError, match="level"):
        stories.embed("a", level="word")
    with pytest.raises(ValueError, match="pooling"):
        stories.embed("a", pooling="max")
    with pytest.raises(ValueError, match="batch_size"):
        stories.embed("a", batch_size=0)
    # a lone surrogate cannot be UTF-8: named, as generate and infill name it (it was the
    # tokenizers library's TypeError about TextEncodeInput)
    for call in (stories.embed, stories.encode):
        with pytest.raises(ValueError, match=r"text 1 contains a lone surrogate '\\ud800'"):
            call(["ok", "a\ud800b"])


def test_threads_equal_serial(stories):
    """4 threads embedding and generating on one model give the serial results."""
    jobs = [("embed", TEXTS), ("gen", ["Once upon a time", "Tom"]), ("embed", TEXTS[::-1]),
            ("gen", ["Lily had a"]), ("tok", TEXTS), ("infill", "Tom [BLANK] the ball.")]

    def run(job):
        kind, arg = job
        if kind == "embed":
            return stories.embed(arg, pooling="mean")
        if kind == "tok":
            return [t.vectors for t in stories.embed(arg, level="token")]
        if kind == "infill":
            return stories.infill(arg).text
        return stories.generate(arg, max_new_tokens=24, do_sample=True, seed=1, top_p=0.9)

    serial = [run(j) for j in jobs]
    results: dict[int, object] = {}
    errors = []

    def worker(k):
        try:
            for rep in range(3):
                for i, j in enumerate(jobs):
                    if (i + k + rep) % 2 == 0:
                        results[(k, rep, i)] = run(j)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results
    for (_, _, i), got in results.items():
        if isinstance(got, (str, list)) and (not got or isinstance(got[0], str)):
            assert got == serial[i]
        elif isinstance(got, list):
            for a, b in zip(got, serial[i], strict=True):
                np.testing.assert_allclose(a, b, atol=1e-6)
        else:
            np.testing.assert_allclose(got, serial[i], atol=1e-6)


_EMBED_PEAK = """
import resource, sys, magnet
magnet.set_num_threads(1)
m = magnet.Model.from_pretrained("stories260K")
texts = [f"Tom saw {i} birds in the park." for i in range(int(sys.argv[1]))]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m.embed(texts, batch_size=128)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


@pytest.mark.slow
def test_embed_memory_per_text_stays_small():
    """embed held the tokenizers library's Encoding of every text for the whole call, some 5 KB
    a text (10 M short texts would have needed 50 GB before the first batch ran); it now keeps
    int32 ids. Measured as the growth of the peak between 20k and 60k texts."""
    import subprocess
    import sys

    def peak_kb(n: int) -> int:
        r = subprocess.run([sys.executable, "-c", _EMBED_PEAK, str(n)], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return int(r.stdout.strip())

    per_text = (peak_kb(60_000) - peak_kb(20_000)) * 1024 / 40_000
    assert per_text < 2048, f"{per_text:.0f} bytes per text"


def test_lone_surrogate_in_instruction_or_prompt_is_named(stories):
    """It was the tokenizers library's TypeError ('TextInputSequence must be str')."""
    with pytest.raises(ValueError, match=r"instruction contains a lone surrogate '\\ud800' at "
                                         r"index 1"):
        stories.embed(["hello"], instruction="Q\ud800: ")
    with pytest.raises(ValueError, match=r"instruction contains a lone surrogate '\\ud800' at "
                                         r"index 0"):
        stories.embed(["hello"], level="token", instruction="\ud800")
    for output_value in ("sentence_embedding", "token_embeddings", None):
        with pytest.raises(ValueError, match=r"prompt contains a lone surrogate '\\udc00' at "
                                             r"index 2"):
            stories.encode(["hello"], prompt="ab\udc00", output_value=output_value)
        with pytest.raises(ValueError, match="prompt contains a lone surrogate"):
            stories.encode([], prompt="\ud800", output_value=output_value)


def test_bad_options_are_named(stories):
    # unhashable values were 'unhashable type' from the dict lookup
    for pooling in (["last"], {"a": 1}, np.array(["last", "mean"])):
        with pytest.raises(ValueError, match=r"pooling must be one of \('last', 'mean'\)"):
            stories.embed(["hi"], pooling=pooling)
        with pytest.raises(ValueError, match=r"pooling must be one of \('last', 'mean'\)"):
            stories.encode(["hi"], pooling=pooling)
    for level in (["sentence"], {"a": 1}, np.array(["sentence", "token"]), np.array(["token"])):
        with pytest.raises(ValueError, match=r"level must be one of \('sentence', 'token'\)"):
            stories.embed(["hi"], level=level)
    for output_value in (["sentence_embedding"], np.array(["a", "b"])):
        with pytest.raises(ValueError, match="output_value must be one of"):
            stories.encode(["hi"], output_value=output_value)
    with pytest.raises(ValueError, match="precision must be one of"):
        stories.encode(["hi"], precision=np.array(["int8", "binary"]))
    # the parameter is prompt= there: the message named instruction
    for texts in (["hi"], []):
        with pytest.raises(TypeError, match="prompt must be a str or None, got int"):
            stories.encode(texts, prompt=5)
    with pytest.raises(TypeError, match="instruction must be a str or None, got int"):
        stories.embed(["hi"], instruction=5)


@pytest.mark.parametrize("texts", [[], ["hi"]])
@pytest.mark.parametrize("output_value", ["sentence_embedding", "token_embeddings", None])
def test_encode_checks_arguments_before_empty_input(stories, texts, output_value):
    """As sentence-transformers (and as with texts), an empty list does not skip the checks."""
    kw = dict(output_value=output_value)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        stories.encode(texts, batch_size=0, **kw)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -2"):
        stories.encode(texts, batch_size=-2, **kw)
    for bad in ("x", 2.0, True, None):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            stories.encode(texts, batch_size=bad, **kw)
    with pytest.raises(ValueError, match="pooling must be one of"):
        stories.encode(texts, pooling="max", **kw)
    with pytest.raises(TypeError, match="max_length must be an int or None"):
        stories.encode(texts, max_length="x", **kw)
    assert len(stories.encode(texts, batch_size=np.int64(1), **kw)) == len(texts)


def test_encode_inputs_keyword(stories):
    """sentence-transformers 6 names encode's first parameter ``inputs`` (``sentences`` is its
    deprecated name); magnet keeps ``sentences`` positional and takes ``inputs=`` as an alias."""
    from magnet import embedding

    want = stories.encode(TEXTS[:2])
    np.testing.assert_array_equal(embedding.encode(stories, inputs=TEXTS[:2]), want)
    np.testing.assert_array_equal(embedding.encode(stories, sentences=TEXTS[:2]), want)
    np.testing.assert_array_equal(stories.encode(sentences=TEXTS[:2]), want)
    np.testing.assert_array_equal(stories.encode(inputs=TEXTS[:2]), want)
    assert embedding.encode(stories, inputs=[]).shape == (0, stories.config.hidden_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one of the ignored-with-a-warning kwargs
        np.testing.assert_array_equal(embedding.encode(stories, inputs="Tom"),
                                      stories.encode("Tom"))
    with pytest.raises(TypeError, match="both sentences and inputs"):
        stories.encode(TEXTS[:2], inputs=TEXTS[:2])
    with pytest.raises(TypeError, match="both sentences and inputs"):
        embedding.encode(stories, TEXTS[:2], inputs=TEXTS[:2])
    with pytest.raises(TypeError, match="no texts"):
        embedding.encode(stories)
