"""The C linear probe (magnet._C.probe_train / probe_predict) and word-vector alignment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet import _C
from magnet.eval.probe import first_subtokens, token_vectors, train_probe, word_vectors


@pytest.fixture()
def one_thread() -> Iterator[None]:
    before = magnet.get_num_threads()
    magnet.set_num_threads(1)
    yield
    magnet.set_num_threads(before)


def _blobs(n: int = 600, d: int = 12, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 4
    y = rng.integers(0, c, size=n)
    # features far from zero mean and with unequal scales: standardisation must be folded back
    X = (centers[y] + rng.normal(size=(n, d))) * np.linspace(0.5, 20, d) + 7
    return X.astype(np.float32), y.astype(np.int32)


def test_probe_learns_and_is_deterministic() -> None:
    X, y = _blobs()
    cfg = dict(epochs=15, batch_size=32, lr=1e-2, seed=3)
    W, b, loss = _C.probe_train(X, y, 3, cfg)
    assert W.shape == (3, 12) and b.shape == (3,) and loss.shape == (15,)
    assert loss[-1] < loss[0] and loss[-1] < 0.1
    pred = _C.probe_predict(X, W, b)
    assert (pred == y).mean() > 0.97
    # W and b apply to raw features
    assert np.array_equal(pred, np.argmax(X.astype(np.float64) @ W.T + b, axis=1))
    W2, b2, _ = _C.probe_train(X, y, 3, cfg)
    assert np.array_equal(W, W2) and np.array_equal(b, b2)
    W3, _, _ = _C.probe_train(X, y, 3, {**cfg, "seed": 4})
    assert not np.array_equal(W, W3)


def test_probe_matches_numpy_reference_without_standardisation() -> None:
    # one full-batch epoch of plain Adam (no decay) from zero, computed in NumPy
    X, _ = _blobs(n=40, d=5, c=2)
    y = (np.arange(40) % 4 == 0).astype(np.int32)  # unbalanced: no gradient is near zero
    lr = 0.05
    W, b, _ = _C.probe_train(X, y, 2, dict(epochs=1, batch_size=40, lr=lr, standardize=0))
    logits = np.zeros((40, 2))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(40), y] -= 1
    gW = p.T @ X.astype(np.float64) / 40
    gb = p.sum(0) / 40
    # the first Adam step is lr * g / (|g| + eps) = lr * sign(g)
    np.testing.assert_allclose(W, -lr * np.sign(gW), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b, -lr * np.sign(gb), rtol=1e-4, atol=1e-6)


def test_probe_errors() -> None:
    X, y = _blobs(n=20)
    with pytest.raises(ValueError, match="label 7 at row"):
        _C.probe_train(X, np.full(20, 7, np.int32), 3, {})
    with pytest.raises(ValueError, match="labels for"):
        _C.probe_train(X, y[:5], 3, {})
    with pytest.raises(TypeError, match="float32"):
        _C.probe_train(X.astype(np.float64), y, 3, {})
    with pytest.raises(ValueError, match="epochs"):
        _C.probe_train(X, y, 3, {"epochs": 0})
    with pytest.raises(ValueError, match="W must be"):
        _C.probe_predict(X, np.zeros((3, 4), np.float32), np.zeros(3, np.float32))


def test_train_probe_string_labels() -> None:
    X, y = _blobs()
    names = ["NOUN", "VERB", "ADJ"]
    probe = train_probe(X, [names[i] for i in y], epochs=10, lr=1e-2, seed=1)
    assert probe.classes == sorted(names)
    pred = probe.predict(X)
    assert np.mean([p == names[i] for p, i in zip(pred, y, strict=True)]) > 0.95


def test_first_subtokens_sentencepiece_and_bytelevel() -> None:
    words = ["EU", "rejects", "it"]
    # SentencePiece with a bare "▁" token whose offsets collapse onto the next character
    tokens = ["▁", "E", "U", "▁", "re", "jects", "▁it"]
    offsets = [(0, 1), (0, 1), (1, 2), (2, 3), (3, 5), (5, 10), (10, 13)]
    assert first_subtokens(words, tokens, offsets) == [1, 4, 6]
    # GPT-2 byte level: the space belongs to the next token
    tokens = ["EU", "Ġre", "jects", "Ġit"]
    offsets = [(0, 2), (2, 5), (5, 10), (10, 13)]
    assert first_subtokens(words, tokens, offsets) == [0, 1, 3]
    # truncated: the last word has no token
    assert first_subtokens(words, tokens[:3], offsets[:3]) == [0, 1, -1]


def test_first_subtokens_skip_the_llama2c_space_marker(stories_dir: Path) -> None:
    # the llama2.c tokenizer puts a bare space piece before the sentence's first word
    # (SentencePiece's prepended space); the word's first sub-token is "E". It holds that space
    # as U+FDD0 internally, which embed (and so the probes) show as "▁"
    m = magnet.Model.from_pretrained(stories_dir / "stories260K.bin")
    words = ["EU", "rejects", "German", "call"]
    tv = token_vectors(m, [" ".join(words)])[0]
    assert tv.tokens[:3] == ["\u2581", "E", "U"]  # the layout this test is about
    idx = first_subtokens(words, tv.tokens, tv.offsets)
    assert idx[0] == 1
    assert not any(tv.tokens[i] == "\u2581" for i in idx)


def test_word_vectors_follow_the_mntp_shift(stories_dir: Path, one_thread: None) -> None:
    m = magnet.Model.from_pretrained(stories_dir / "stories260K.bin")
    sents = [["Tom", "saw", "a", "big", "dog", "."], ["Lily", "smiled"]]
    vecs, kept = word_vectors(m, sents, batch_size=2)
    assert [v.shape for v in vecs] == [(6, 64), (2, 64)]
    assert kept[0].tolist() == list(range(6))
    text = "Tom saw a big dog ."
    ids = [m.tokenizer.bos_id, *m.tokenizer.encode(text, add_bos=False)]
    h = m.hidden_states(np.array(ids), np.zeros(len(ids), np.uint8))
    tv = token_vectors(m, [text])[0]
    # token t's vector is the state at t - 1 (the BOS state for the first token)
    np.testing.assert_allclose(tv.vectors, h[:-1], rtol=1e-4, atol=1e-5)
    idx = first_subtokens(sents[0], tv.tokens, tv.offsets)
    np.testing.assert_allclose(vecs[0], h[np.array(idx)], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(lr=float("inf")), dict(lr=float("nan")), dict(lr=1e300),
                                 dict(weight_decay=float("inf")), dict(lr=-1.0)])
def test_probe_rejects_non_finite_rates(bad: dict[str, float]) -> None:
    X, y = _blobs(n=20)
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"probe {name} must be a finite number >= 0"):
        _C.probe_train(X, y, 3, bad)  # the C core checks too (1e300 overflows float32)
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        train_probe(X, [str(v) for v in y], **bad)


def test_probe_seed_is_64_bit() -> None:
    X, y = _blobs(n=50)
    W0, _, _ = _C.probe_train(X, y, 3, {"epochs": 1, "batch_size": 8})
    for seed in (1 << 32, (1 << 64) - 1, np.uint64((1 << 64) - 1)):
        W, _, _ = _C.probe_train(X, y, 3, {"epochs": 1, "batch_size": 8, "seed": seed})
        assert not np.array_equal(W, W0)  # not read as 0 (32-bit truncation)
    a = train_probe(X, list(map(str, y)), epochs=1, batch_size=8, seed=(1 << 64) - 1)
    b = train_probe(X, list(map(str, y)), epochs=1, batch_size=8, seed=(1 << 64) - 1)
    assert np.array_equal(a.W, b.W)
    for seed in (-1, 1 << 64):
        in_range = rf"must be an integer in \[0, 2\*\*64\), got {seed}"
        with pytest.raises(ValueError, match=f"config 'seed' {in_range}"):
            _C.probe_train(X, y, 3, {"seed": seed})
        with pytest.raises(ValueError, match=f"^seed {in_range}"):
            train_probe(X, list(map(str, y)), seed=seed)
    with pytest.raises(TypeError, match="seed"):
        _C.probe_train(X, y, 3, {"seed": 1.5})


def test_probe_without_training_rows() -> None:
    with pytest.raises(ValueError, match=r"no training rows \(0 labelled words\)"):
        train_probe(np.zeros((0, 4), np.float32), [])
    with pytest.raises(ValueError, match="no training rows"):
        _C.probe_train(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), 2, {})
    with pytest.raises(ValueError, match="num_classes must be in"):
        _C.probe_train(np.zeros((2, 4), np.float32), np.zeros(2, np.int32), 0, {})
