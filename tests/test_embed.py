"""Sentence and token embeddings against references built from ``Model.hidden_states``; the
sentence-transformers ``encode`` surface; bad input; concurrent calls on one model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import magnet
from magnet.embedding import DEFAULT_INSTRUCTION
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
    with pytest.raises(ValueError, match="empty"):
        stories.encode([])


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
