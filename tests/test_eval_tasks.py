"""magnet.eval tasks and CLI on stories260K and the tiny fixtures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import magnet
from magnet.eval import tasks
from magnet.eval.__main__ import main as eval_main

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def model(stories_dir: Path) -> Iterator[magnet.Model]:
    # one thread: a tiny model on a shared machine runs fastest without a thread team
    before = magnet.get_num_threads()
    magnet.set_num_threads(1)
    yield magnet.Model.from_pretrained(stories_dir / "stories260K.bin")
    magnet.set_num_threads(before)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.mark.parametrize("sub", ["stsb", "sick", "senteval"])
def test_sts_formats(model: magnet.Model, sub: str) -> None:
    res = tasks.evaluate_sts(model, FIX / sub, progress=False)
    assert np.isfinite(res["spearman"]) and -100 <= res["spearman"] <= 100
    n_files = 2 if sub == "senteval" else 1
    assert len(res["files"]) == n_files
    # the year's score is the mean over its files (SentEval "all")
    assert res["spearman"] == pytest.approx(np.mean([f["spearman"]
                                                     for f in res["files"].values()]))


def test_sts_uses_cosine_of_sentence_embeddings(model: magnet.Model) -> None:
    class Fixed:
        """An encoder whose vectors make the cosine ranking equal the gold ranking."""

        def encode(self, texts: list[str], batch_size: int = 32, **_: Any) -> np.ndarray:
            gold = {"A man is playing a guitar.": 0.0, "A man plays the guitar.": 0.1,
                    "A woman is slicing an onion.": 0.0, "A dog runs in the park.": 3.0,
                    "The cat sat on the mat.": 0.0, "A cat is sitting on a mat.": 0.5,
                    "I like green tea.": 0.0, "The train was late again.": 1.5}
            return np.array([[1.0, gold[t]] for t in texts])

    res = tasks.evaluate_sts(Fixed(), FIX / "stsb" / "sts-test.csv", progress=False)
    assert res["spearman"] == pytest.approx(100.0)


def test_tagging_probe_runs(model: magnet.Model) -> None:
    f = FIX / "conll2003.txt"
    res = tasks.evaluate_tagging(model, "conll2003-ner", train_path=f, test_path=f, epochs=30,
                                 lr=5e-2, progress=False)
    assert res["train_words"] == res["test_words"] == 9 + 2 + 2 + 7
    assert res["entities"] == 7 and 0 <= res["f1"] <= 100
    assert res["probe_loss"][-1] < res["probe_loss"][0]
    res = tasks.evaluate_tagging(model, "ud-upos", train_path=FIX / "tiny.conllu",
                                 test_path=FIX / "tiny.conllu", epochs=50, lr=5e-2,
                                 progress=False)
    assert res["accuracy"] == pytest.approx(100.0)  # 8 words, 8 dims of room: memorised
    res = tasks.evaluate_tagging(model, "conll2000-chunk", train_path=FIX / "conll2000.txt",
                                 test_path=FIX / "conll2000.txt", max_sentences=1,
                                 progress=False)
    assert res["train_sentences"] == 1 and res["test_sentences"] == 1
    with pytest.raises(ValueError, match="unknown tagging task"):
        tasks.evaluate_tagging(model, "ner", FIX)


def test_tagging_feature_cache_reuses_vectors(model: magnet.Model) -> None:
    f = FIX / "conll2003.txt"
    cache: dict = {}
    kw = dict(train_path=f, test_path=f, epochs=5, lr=5e-2, progress=False)
    first = tasks.evaluate_tagging(model, "conll2003-ner", feature_cache=cache, **kw)
    assert len(cache) == 1  # train and test are the same sentences here: embedded once
    cached_vecs = next(iter(cache.values()))[0]
    pos_cached = tasks.evaluate_tagging(model, "conll2003-pos", feature_cache=cache, **kw)
    assert len(cache) == 1 and next(iter(cache.values()))[0] is cached_vecs
    pos_fresh = tasks.evaluate_tagging(model, "conll2003-pos", **kw)
    assert pos_cached["accuracy"] == pos_fresh["accuracy"]
    assert pos_cached["probe_loss"] == pos_fresh["probe_loss"]
    assert first["train_words"] == pos_cached["train_words"]


def test_tagging_feature_cache_sees_an_adapted_model_as_new(stories_dir: Path) -> None:
    """The cache was keyed by id(model): after adapt() it served the old weights' vectors
    (and the score before adaptation)."""
    m = magnet.Model.from_pretrained(stories_dir / "stories260K.bin")
    f = FIX / "conll2003.txt"
    cache: dict = {}
    kw = dict(train_path=f, test_path=f, epochs=5, lr=5e-2, progress=False)
    tasks.evaluate_tagging(m, "conll2003-pos", feature_cache=cache, **kw)
    m.adapt(["Once upon a time there was a little dog who liked to run."] * 8, steps=3,
            batch_size=2, seq_len=16, lr=5e-2, progress=False)
    cached = tasks.evaluate_tagging(m, "conll2003-pos", feature_cache=cache, **kw)
    assert len(cache) == 2
    fresh = tasks.evaluate_tagging(m, "conll2003-pos", **kw)
    assert cached["probe_loss"] == fresh["probe_loss"]


def test_infill_matches_a_direct_computation(model: magnet.Model) -> None:
    path = FIX / "wiki.tokens"
    window, n = 64, 3
    res = tasks.evaluate_infill(model, path, num_spans=n, window=window, span_min=8,
                                span_max=12, min_context=8, seed=5, batch_size=2,
                                progress=False)
    stream = tasks._token_stream(model, path)
    body = window - 1
    chosen, starts, lengths = tasks.infill_spans(len(stream) // body, window, n, 8, 12, 8, 5)
    nll = {"both": 0.0, "left": 0.0}
    for w, s, L in zip(chosen, starts, lengths, strict=True):
        ids = np.concatenate([[model.tokenizer.bos_id], stream[w * body:(w + 1) * body]])
        roles = np.zeros(window, np.uint8)
        roles[s:s + L] = 1
        lp = _log_softmax(model.logits(ids, roles))
        nll["both"] -= sum(lp[i - 1, ids[i]] for i in range(s, s + L))
        cut = ids[:s + L]  # left context only: the causal model truncated at the span's end
        lp = _log_softmax(model.logits(cut))
        nll["left"] -= sum(lp[i - 1, cut[i]] for i in range(s, s + L))
    count = int(lengths.sum())
    assert res["span_tokens"] == count
    assert res["ppl_both"] == pytest.approx(np.exp(nll["both"] / count), rel=1e-4)
    assert res["ppl_left"] == pytest.approx(np.exp(nll["left"] / count), rel=1e-4)
    assert res["ppl_both"] != pytest.approx(res["ppl_left"])


def test_retention_sliding_windows(model: magnet.Model) -> None:
    path = FIX / "wiki.tokens"
    stream = tasks._token_stream(model, path)
    n = 60
    full = tasks.evaluate_retention(model, path, window=n + 1, stride=n, max_tokens=n,
                                    progress=False)
    ids = np.concatenate([[model.tokenizer.bos_id], stream[:n]])
    lp = _log_softmax(model.logits(ids))
    ref = -np.mean([lp[i - 1, ids[i]] for i in range(1, n + 1)])
    assert full["tokens"] == n and full["windows"] == 1
    assert full["ppl"] == pytest.approx(np.exp(ref), rel=1e-4)
    strided = tasks.evaluate_retention(model, path, window=32, stride=16, max_tokens=200,
                                       batch_size=3, progress=False)
    assert strided["tokens"] == 200  # every token scored exactly once
    assert strided["windows"] == len(range(0, 200 - 31 + 16, 16))


def test_repetition_with_a_stub_generator(model: magnet.Model) -> None:
    class Stub:
        tokenizer = model.tokenizer

        def generate(self, prompts: list[str], **kw: Any) -> list[str]:
            assert kw["do_sample"] is False and kw["max_new_tokens"] == 20
            return ["It rains. It rains. It rains." for _ in prompts]

    res = tasks.evaluate_repetition(Stub(), FIX / "wiki.tokens", num_prompts=3, prompt_tokens=16,
                                    max_new_tokens=20, batch_size=2, progress=False)
    assert res["continuations"] == 3
    assert res["repeated_sentence_share"] == pytest.approx(2 / 3)
    assert res["repeated_4gram_share"] == pytest.approx(1 - 2 / 3)  # 6 words, 3 grams, 2 unique
    assert len(res["samples"]) == 3 and res["samples"][0]["prompt"]
    prompts = tasks.repetition_prompts(model, FIX / "wiki.tokens", 3, 16, seed=0)
    assert all(len(model.tokenizer.encode(p, add_bos=False)) >= 14 for p in prompts)


def test_repetition_with_the_model(model: magnet.Model) -> None:
    res = tasks.evaluate_repetition(model, FIX / "wiki.tokens", num_prompts=2, prompt_tokens=8,
                                    max_new_tokens=24, progress=False)
    assert res["continuations"] == 2 and 0 <= res["repeated_4gram_share"] <= 1


def test_cli_writes_json(stories_dir: Path, tmp_path: Path, model: magnet.Model,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = eval_main(["sts", "--model", str(stories_dir / "stories260K.bin"), "--data",
                    str(FIX / "sick"), "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["task"] == "sts" and "SICK-TEST" in res["files"]
    rc = eval_main(["conll2003-ner", "--model", str(stories_dir / "stories260K.bin"), "--data",
                    str(tmp_path), "--no-progress", "--threads", "1"])
    assert rc == 2
    assert "eng.train" in capsys.readouterr().err


def test_cli_checks_out_before_the_run(stories_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["sts", "--model", str(stories_dir / "stories260K.bin"), "--data",
            str(FIX / "sick"), "--no-progress", "--threads", "1"]
    for out, says in ((tmp_path / "no" / "dir" / "r.json", "does not exist"),
                      (tmp_path, "is a directory")):
        rc = eval_main([*base, "--out", str(out)])
        cap = capsys.readouterr()
        assert rc == 2 and cap.out == ""  # nothing was run
        assert cap.err.startswith("error: --out") and says in cap.err
    # a write that fails anyway is reported the same way, after the result is printed
    import magnet.eval.__main__ as cli

    monkeypatch.setattr(cli, "check_writable", lambda path: None)
    rc = eval_main([*base, "--out", str(tmp_path / "no" / "r.json")])
    cap = capsys.readouterr()
    assert rc == 2 and "Traceback" not in cap.err
    assert cap.err.startswith("error: cannot write --out") and json.loads(cap.out)["task"] == "sts"


@pytest.mark.parametrize(("task", "option"), [
    ("sts", "--max-pairs"), ("ud-upos", "--max-sentences"), ("sts", "--batch-size"),
    ("ud-upos", "--max-test-sentences"), ("infill", "--num-spans"),
    ("repetition", "--num-prompts"),
])
def test_cli_rejects_zero_counts(stories_dir: Path, task: str, option: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("0", "-1"):
        with pytest.raises(SystemExit) as e:
            eval_main([task, "--model", str(stories_dir / "stories260K.bin"), "--data",
                       str(FIX), option, value, "--no-progress"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1
        assert f"argument {option}: must be an integer >= 1, got {value}" in err


def test_cli_missing_data_is_an_error(stories_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_main(["sts", "--model", str(stories_dir / "stories260K.bin")]) == 2
    assert capsys.readouterr().err == "error: sts: --data is required\n"


def test_functions_reject_zero_counts(model: magnet.Model) -> None:
    with pytest.raises(ValueError, match="max_pairs must be an integer >= 1, got 0"):
        tasks.evaluate_sts(model, FIX / "sick", max_pairs=0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        tasks.evaluate_sts(model, FIX / "sick", batch_size=0, progress=False)
    f = FIX / "tiny.conllu"
    with pytest.raises(ValueError, match="max_sentences must be an integer >= 1, got 0"):
        tasks.evaluate_tagging(model, "ud-upos", train_path=f, test_path=f, max_sentences=0,
                               progress=False)
    with pytest.raises(ValueError, match="num_spans must be an integer >= 1, got 0"):
        tasks.evaluate_infill(model, FIX / "wiki.tokens", num_spans=0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        tasks.evaluate_retention(model, FIX / "wiki.tokens", batch_size=0, progress=False)
    with pytest.raises(ValueError, match="num_prompts must be an integer >= 1, got 0"):
        tasks.evaluate_repetition(model, FIX / "wiki.tokens", num_prompts=0, progress=False)


def test_token_stream_joins_articles_with_a_blank_line(model: magnet.Model) -> None:
    path = FIX / "wiki.tokens"
    text = "\n\n".join(tasks.read_wikitext(path))
    assert tasks._token_stream(model, path).tolist() == model.tokenizer.encode(text, add_bos=False)
    assert '"\\n\\n"' in (tasks._token_stream.__doc__ or "")  # the docstring says so too


def test_cli_out_is_strict_json(stories_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    # one new token: no continuation has 4 words, so the 4-gram share is undefined
    out = tmp_path / "r.json"
    rc = eval_main(["repetition", "--model", str(stories_dir / "stories260K.bin"), "--data",
                    str(FIX / "wiki.tokens"), "--num-prompts", "2", "--prompt-tokens", "8",
                    "--max-new-tokens", "1", "--out", str(out), "--no-progress",
                    "--threads", "1"])
    assert rc == 0
    text = out.read_text()

    def reject(const: str) -> None:
        raise AssertionError(f"non-standard JSON constant {const}")

    res = json.loads(text, parse_constant=reject)
    assert res["repeated_4gram_share"] is None and res["ngram_scored"] == 0
    assert json.loads(capsys.readouterr().out, parse_constant=reject) == res
    from magnet.eval.__main__ import strict_json

    assert strict_json({"a": [float("nan"), np.float32("inf"), np.float64(2.5)],
                        "b": np.array([1.0, np.nan]), "c": (np.int64(3), "x", None)}) == {
        "a": [None, None, 2.5], "b": [1.0, None], "c": [3, "x", None]}


def test_sts_undefined_correlation_is_none() -> None:
    class Constant:  # every sentence the same vector: cosine 1 everywhere, no correlation
        def encode(self, texts: list[str], batch_size: int = 32, **kw: Any) -> np.ndarray:
            return np.ones((len(texts), 4), np.float32)

    res = tasks.evaluate_sts(Constant(), FIX / "sick", progress=False)
    assert res["spearman"] is None and res["pearson"] is None
    assert res["files"]["SICK-TEST"]["spearman"] is None
    json.dumps(res, allow_nan=False)


@pytest.mark.parametrize("task", ["infill", "ud-upos", "repetition", "sts"])
def test_cli_seed_range(stories_dir: Path, task: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("-1", str(1 << 64)):
        with pytest.raises(SystemExit) as e:
            eval_main([task, "--model", str(stories_dir / "stories260K.bin"), "--data",
                       str(FIX), "--seed", value, "--no-progress"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1
        assert f"argument --seed: must be an integer in [0, 2**64), got {value}" in err


def test_functions_share_the_seed_range(model: magnet.Model) -> None:
    f = FIX / "tiny.conllu"
    big = (1 << 64) - 1  # the probe's C core used to read a 32-bit seed
    res = tasks.evaluate_tagging(model, "ud-upos", train_path=f, test_path=f, epochs=1,
                                 seed=big, progress=False)
    assert res["seed"] == big and res["train_words"] > 0
    res = tasks.evaluate_infill(model, FIX / "wiki.tokens", num_spans=1, window=64, span_min=8,
                                span_max=8, min_context=8, seed=big, progress=False)
    assert res["spans"] == 1
    for seed in (-1, 1 << 64):
        match = rf"seed must be an integer in \[0, 2\*\*64\), got {seed}"
        with pytest.raises(ValueError, match=match):
            tasks.evaluate_infill(model, FIX / "wiki.tokens", seed=seed, progress=False)
        with pytest.raises(ValueError, match=match):
            tasks.evaluate_tagging(model, "ud-upos", train_path=f, test_path=f, seed=seed,
                                   progress=False)
        with pytest.raises(ValueError, match=match):
            tasks.evaluate_repetition(model, FIX / "wiki.tokens", seed=seed, progress=False)
        with pytest.raises(ValueError, match=match):
            tasks.evaluate_sts(model, FIX / "sick", seed=seed, progress=False)


def test_tagging_rejects_bad_rates_before_embedding(model: magnet.Model,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def no_embedding(*a: Any, **kw: Any) -> None:
        raise AssertionError("embedded before checking the probe settings")

    monkeypatch.setattr(tasks, "word_vectors", no_embedding)
    f = FIX / "tiny.conllu"
    for kw in (dict(lr=float("inf")), dict(weight_decay=float("inf")), dict(lr=float("nan"))):
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            tasks.evaluate_tagging(model, "ud-upos", train_path=f, test_path=f, progress=False,
                                   **kw)
    for opt in ("--lr", "--weight-decay"):
        with pytest.raises(SystemExit):
            eval_main(["ud-upos", "--model", "unused", "--data", str(FIX), opt, "inf"])
        assert f"argument {opt}: must be a finite number >= 0" in capsys.readouterr().err


def test_tagging_without_training_words(model: magnet.Model,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def all_cut(m: Any, sents: list[list[str]], *a: Any, **kw: Any) -> tuple[list, list]:
        return ([np.zeros((0, 64), np.float32) for _ in sents],
                [np.zeros(0, np.int64) for _ in sents])  # every word past the length limit

    monkeypatch.setattr(tasks, "word_vectors", all_cut)
    f = FIX / "tiny.conllu"
    with pytest.raises(ValueError, match=r"ud-upos: no training words: all \d+ words of the "
                                         r"\d+ train sentences were cut by the length limit"):
        tasks.evaluate_tagging(model, "ud-upos", train_path=f, test_path=f, progress=False)


def test_tasks_without_a_tokenizer(stories_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # a llama2.c checkpoint with no tokenizer file beside it loads with tokenizer None
    ckpt = tmp_path / "stories260K.bin"
    shutil.copyfile(stories_dir / "stories260K.bin", ckpt)
    bare = magnet.Model.from_pretrained(ckpt)
    assert bare.tokenizer is None
    wiki = FIX / "wiki.tokens"
    with pytest.raises(ValueError, match="infill needs a tokenizer"):
        tasks.evaluate_infill(bare, wiki, num_spans=2, progress=False)
    with pytest.raises(ValueError, match="retention needs a tokenizer"):
        tasks.evaluate_retention(bare, wiki, max_tokens=100, progress=False)
    with pytest.raises(ValueError, match="repetition needs a tokenizer"):
        tasks.evaluate_repetition(bare, wiki, num_prompts=2, progress=False)
    for task in ("infill", "retention", "repetition"):
        rc = eval_main([task, "--model", str(ckpt), "--data", str(wiki), "--no-progress",
                        "--threads", "1"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: {task} needs a tokenizer"), err


def test_sts_of_one_pair_is_none(stories_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    class Varied:  # distinct vectors: only the pair count leaves the correlation undefined
        def encode(self, texts: list[str], batch_size: int = 32, **kw: Any) -> np.ndarray:
            return np.array([[1.0, len(t)] for t in texts], np.float32)

    res = tasks.evaluate_sts(Varied(), FIX / "sick", max_pairs=1, progress=False)
    assert res["files"]["SICK-TEST"]["pairs"] == 1
    assert res["spearman"] is None and res["pearson"] is None
    out = tmp_path / "r.json"
    rc = eval_main(["sts", "--model", str(stories_dir / "stories260K.bin"), "--data",
                    str(FIX / "sick"), "--max-pairs", "1", "--out", str(out), "--no-progress",
                    "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["spearman"] is None and res["pearson"] is None


def test_infill_smallest_window(model: magnet.Model) -> None:
    # BOS, 3 tokens of context, a span of 4, 3 tokens of context: 11 tokens
    kw: dict[str, Any] = dict(num_spans=2, span_min=4, span_max=4, min_context=3,
                              progress=False)
    res = tasks.evaluate_infill(model, FIX / "wiki.tokens", window=11, **kw)
    assert res["spans"] == 2 and res["span_tokens"] == 8
    _, starts, lengths = tasks.infill_spans(10, 11, 2, 4, 4, 3, seed=0)
    assert starts.tolist() == [4, 4] and (11 - starts - lengths).tolist() == [3, 3]
    with pytest.raises(ValueError, match=r"window >= span_max \+ 2 \* min_context \+ 1 .*"
                                         r"window=10"):
        tasks.evaluate_infill(model, FIX / "wiki.tokens", window=10, **kw)
