"""The magnet command line on the embedded stories260K model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import magnet


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magnet", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_generate_prints_the_continuation():
    r = run("generate", "--prompt", "Once upon a time", "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    m = magnet.Model.from_pretrained("stories260K")
    assert r.stdout.strip() == ("Once upon a time" + m.generate("Once upon a time",
                                                                 max_new_tokens=12)).strip()


def test_infill_writes_json(tmp_path):
    out = tmp_path / "fill.json"
    r = run("infill", "--text", "The little [BLANK] ran to the park.", "--span-tokens", "3",
            "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["span_tokens"] == [3] and len(res["spans"]) == 1
    assert res["text"].startswith("The little ") and res["text"].endswith(" ran to the park.")
    assert res["text"] in r.stdout


@pytest.mark.parametrize("level", ["sentence", "token"])
def test_embed_writes_numpy(tmp_path, level):
    inp = tmp_path / "texts.txt"
    inp.write_text("A dog ran.\nThe sun is hot today.\n")
    out = tmp_path / ("vecs.npy" if level == "sentence" else "vecs.npz")
    r = run("embed", "--input", str(inp), "--out", str(out), "--level", level, "--quiet")
    assert r.returncode == 0, r.stderr
    m = magnet.Model.from_pretrained("stories260K")
    if level == "sentence":
        vecs = np.load(out)
        np.testing.assert_allclose(vecs, m.embed(["A dog ran.", "The sun is hot today."]),
                                   atol=1e-5)
    else:
        z = np.load(out)
        assert sorted(z.files) == ["text0", "text1"] and z["text0"].shape[1] == 64


def test_adapt_saves_a_loadable_model(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(f"Once upon a time a {w} went to the park and played all day."
                                for w in ("dog", "cat", "girl", "boy", "bird", "frog")))
    out = tmp_path / "adapted"
    r = run("adapt", "--data", str(data), "--out", str(out), "--steps", "3", "--batch-size",
            "2", "--seq-len", "32", "--quiet", "--json", str(tmp_path / "run.json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["steps"] == 3 and summary["last"]["step"] == 2
    m = magnet.Model.from_pretrained(out)
    ids = m.tokenizer.encode("a dog")
    assert m.logits(ids).shape == (len(ids), 512)


def test_demo_runs():
    r = run("demo", "--steps", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    for section in ("Generation before adaptation", "Adaptation (magnet preset)",
                    "Sentence similarity", "Infilling", "Generation after adaptation"):
        assert section in r.stdout


@pytest.mark.parametrize("args", [
    ["generate", "--model", "/no/such/model", "--prompt", "hi"],
    ["generate", "--model", "no-such-model-name", "--prompt", "hi"],
    ["embed", "--text", "x", "--out", "o.npy", "--level", "word"],
    ["generate", "--prompt", "hi", "--max-new-tokens", "many"],
    ["generate", "--prompt", "hi", "--top-p", "7"],
    ["infill", "--text", "no blank here"],
    ["frobnicate"],
])
def test_errors_are_one_line_with_status_2(args, tmp_path):
    r = subprocess.run([sys.executable, "-m", "magnet", *args], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_eval_sts_writes_results(tmp_path, shared_data):
    sts = shared_data / "sts" / "stsbenchmark" / "sts-test.csv"
    if not sts.is_file():
        pytest.skip(f"{sts} not found")
    out = tmp_path / "sts.json"
    r = run("eval", "sts", "--model", "stories260K", "--data", str(sts), "--max-pairs", "40",
            "--no-progress", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    flat = json.dumps(res)
    assert "spearman" in flat.lower()
