"""The magnet command line on the embedded stories260K model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import magnet

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize(("level", "name"), [("sentence", "vecs"), ("token", "tok.npy")])
def test_embed_writes_exactly_the_given_path(tmp_path, level, name):
    out = tmp_path / name
    r = run("embed", "--text", "A dog ran.", "--out", str(out), "--level", level, "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == [name]  # no .npy / .npz appended
    assert r.stdout.startswith(f"wrote {out}:")
    with open(out, "rb") as f:
        loaded = np.load(f)
        assert (loaded.shape == (1, 64)) if level == "sentence" else (loaded.files == ["text0"])


def test_embed_input_gives_one_row_per_line(tmp_path):
    # blank and whitespace-only lines are rows too; U+2028, \x85 and \x0c do not end a line;
    # "\r\n" does; the final newline does not start another row
    lines = ["first line", "", "third line", "   ", "one\u2028text", "a\x85b\x0cc", "last"]
    inp = tmp_path / "in.txt"
    inp.write_bytes(("\n".join(lines[:-1]) + "\r\n" + lines[-1] + "\n").encode())
    out = tmp_path / "v.npy"
    r = run("embed", "--input", str(inp), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    vecs = np.load(out)
    m = magnet.Model.from_pretrained("stories260K")
    assert vecs.shape == (len(lines), 64)
    np.testing.assert_allclose(vecs, m.embed(lines), atol=1e-5)


def test_embed_input_not_utf8_names_file_and_line(tmp_path):
    inp = tmp_path / "latin1.txt"
    inp.write_bytes(b"fine\ncaf\xe9\n")
    r = run("embed", "--input", str(inp), "--out", str(tmp_path / "v.npy"), "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{inp}:2: not UTF-8" in r.stderr


def test_generate_stream_writes_json(tmp_path):
    out = tmp_path / "g.json"
    r = run("generate", "--prompt", "Once upon a time", "--max-new-tokens", "8", "--stream",
            "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    m = magnet.Model.from_pretrained("stories260K")
    assert res == {"prompt": "Once upon a time",
                   "completion": m.generate("Once upon a time", max_new_tokens=8)}
    assert r.stdout == "Once upon a time" + res["completion"] + "\n"


@pytest.mark.parametrize("command", ["generate", "infill"])
@pytest.mark.parametrize(("flag", "name", "value"), [("--min-p", "min_p", 0.3),
                                                     ("--repetition-penalty",
                                                      "repetition_penalty", 3.0)])
def test_min_p_and_repetition_penalty_are_passed_through(tmp_path, command, flag, name, value):
    m = magnet.Model.from_pretrained("stories260K")
    if command == "generate":
        call = dict(prompt="Once upon a time", max_new_tokens=40, do_sample=True, seed=1)
        args = ["--prompt", call["prompt"], "--max-new-tokens", "40"]
        key = "completion"

        def api(**kw):
            return m.generate(**call, **kw)
    else:
        call = dict(text="The little [BLANK] ran to the park.", span_tokens=8, do_sample=True,
                    seed=1)
        args = ["--text", call["text"], "--span-tokens", "8"]
        key = "text"

        def api(**kw):
            return m.infill(**call, **kw).text
    want = api(**{name: value})
    assert want != api()  # the option changes this output
    out = tmp_path / "r.json"
    r = run(command, *args, "--do-sample", "--seed", "1", flag, str(value), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())[key] == want
    r = run(command, *args, flag, "-1")
    assert r.returncode == 2 and name in r.stderr, r.stderr


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


@pytest.mark.parametrize(("out", "says"), [
    ("a_file", "--out 'a_file' exists and is not a directory"),
    (".", "cannot save into --out '.': it is (or holds) the current working directory"),
    ("a_file/model", "a_file is not a directory"),
], ids=["file", "cwd", "under_a_file"])
def test_adapt_checks_out_before_loading_and_training(tmp_path, out, says):
    """--out used to be checked by the save after training; a model that cannot be found shows
    that the check now comes first."""
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "data.txt").write_text("A dog ran to the park.\n\nThe cat sat on a mat.\n")
    r = subprocess.run([sys.executable, "-m", "magnet", "adapt", "--model", "/no/such/model",
                        "--data", "data.txt", "--out", out, "--quiet"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert r.stderr.startswith("magnet: error: ") and f"--out '{out}'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "data.txt"]


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
    # beyond int32 positions: a span length and a generation limit
    ["infill", "--text", "a [BLANK] b", "--span-tokens", "3000000000"],
    ["generate", "--prompt", "hi", "--max-new-tokens", "3000000000"],
    # output paths are checked before the work
    ["embed", "--text", "x", "--out", "no/such/dir/o.npy"],
    ["embed", "--text", "x", "--out", "."],
    ["generate", "--prompt", "hi", "--json", "no/such/dir/g.json"],
    ["generate", "--prompt", "hi", "--json", "g/"],  # wrote a file named g
])
def test_errors_are_one_line_with_status_2(args, tmp_path):
    r = subprocess.run([sys.executable, "-m", "magnet", *args], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("magnet: error: ") or r.stderr.startswith("magnet ")
    if "--max-new-tokens" in args and "3000000000" in args:
        assert "memory" in r.stderr  # the MemoryError's own message survives
    if "--span-tokens" in args:
        assert "positions" in r.stderr


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


def _one_line_error(r: subprocess.CompletedProcess, prefix: str = "magnet") -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(prefix), r.stderr
    return r.stderr


@pytest.mark.parametrize("bad", [["--top-p", "0"], ["--max-new-tokens", "3000000000"]],
                         ids=["top_p", "kv_cache"])
def test_generate_stream_error_writes_nothing_to_stdout(bad):
    """The prompt used to be written before the stream checked its arguments (top_p) or set up
    its KV cache (the MemoryError of a huge max_new_tokens)."""
    r = run("generate", "--prompt", "hi there", "--stream", *bad, timeout=60)
    err = _one_line_error(r, "magnet: error: ")
    assert r.stdout == ""
    assert ("top_p" in err and "0.0" in err) if bad[0] == "--top-p" else "3000000000" in err


@pytest.mark.parametrize(("args", "option"), [
    (["embed", "--text", "x", "--out", ""], "--out"),
    (["adapt", "--data", "d.txt", "--out", ""], "--out"),
    (["adapt", "--data", "d.txt", "--out", "m", "--json", ""], "--json"),
    (["generate", "--prompt", "hi", "--json", ""], "--json"),
    (["infill", "--text", "a [BLANK] b", "--json", ""], "--json"),
    (["eval", "sts", "--data", "d.txt", "--out", ""], "--out"),
])
def test_empty_output_paths_are_rejected_by_the_parser(args, option, tmp_path):
    """An empty --out / --json skipped the early writability check: the work was done, then the
    write failed (or, for --json and eval's --out, nothing was written and the status was 0)."""
    r = subprocess.run([sys.executable, "-m", "magnet", *args, "--model", "/no/such/model"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    err = _one_line_error(r, f"magnet {args[0]}: error: ")
    assert f"argument {option}: must be a file path, got an empty string ''" in err
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_embed_input_reads_pipes_and_stdin(tmp_path):
    """--input took only regular files: /dev/stdin, a FIFO or a shell's <(...) were 'not found'."""
    lines = ["A dog ran.", "The sun is hot today."]
    data = "\n".join(lines) + "\n"
    m = magnet.Model.from_pretrained("stories260K")
    want = m.embed(lines)
    for source in ("/dev/stdin", "-"):
        out = tmp_path / "v.npy"
        r = subprocess.run([sys.executable, "-m", "magnet", "embed", "--input", source, "--out",
                            str(out), "--quiet"], input=data, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        np.testing.assert_allclose(np.load(out), want, atol=1e-5)
        out.unlink()


@pytest.mark.parametrize(("what", "says"), [("missing", "file not found"),
                                            ("dir", "is a directory")])
def test_embed_input_missing_or_directory(tmp_path, what, says):
    path = tmp_path / "nope.txt" if what == "missing" else tmp_path
    r = run("embed", "--input", str(path), "--out", str(tmp_path / "v.npy"), timeout=60)
    err = _one_line_error(r, "magnet: error: ")
    assert f"--input {path}: {says}" in err


@pytest.mark.parametrize("source", ["/dev/stdin", "-"])
def test_adapt_data_from_a_pipe(tmp_path, source):
    """--data /dev/stdin (a pipe) is read as .txt: it used to be 'training data file not
    found'. "-" means standard input, as embed's --input - does (it was 'not found' too)."""
    data = "\n\n".join(f"Once upon a time a {w} went to the park and played all day."
                       for w in ("dog", "cat", "girl", "boy"))
    out = tmp_path / "adapted"
    r = subprocess.run([sys.executable, "-m", "magnet", "adapt", "--data", source, "--out",
                        str(out), "--steps", "1", "--batch-size", "2", "--seq-len", "32",
                        "--quiet", "--json", str(tmp_path / "run.json")], input=data,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run.json").read_text())["steps"] == 1
    assert (out / "config.json").is_file()


def test_adapt_data_not_utf8_names_file_and_line(tmp_path):
    """A Latin-1 .txt was trained on with U+FFFD in place of its bytes; embed --input refused it
    with FILE:LINE: not UTF-8 text, and now adapt --data does too (before any training)."""
    data = tmp_path / "latin1.txt"
    data.write_bytes(b"A dog ran to the park.\n\nThe caf\xe9 was open.\n")
    r = run("adapt", "--data", str(data), "--out", str(tmp_path / "m"), "--steps", "1",
            "--quiet", timeout=60)
    err = _one_line_error(r, "magnet: error: ")
    assert f"{data}:3: not UTF-8 text" in err
    assert not (tmp_path / "m").exists()


def test_eval_through_magnet_names_magnet_eval():
    """`magnet eval` showed `python -m magnet.eval` in its usage and argument errors."""
    r = run("eval", "sts", "--model", "stories260K", "--seed", "-1", timeout=60)
    err = _one_line_error(r, "magnet eval: error: ")
    assert "argument --seed" in err and "-1" in err
    r = run("eval", "--help", timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: magnet eval "), r.stdout[:200]
    # run as a module it keeps its own name
    r = subprocess.run([sys.executable, "-m", "magnet.eval", "sts", "--model", "x", "--seed",
                        "-1"], capture_output=True, text=True, timeout=60)
    _one_line_error(r, "python -m magnet.eval: error: ")


def test_eval_interrupted_is_one_line_with_status_130(monkeypatch, capsys):
    """Ctrl-C in `python -m magnet.eval` printed a traceback; `python -m magnet` prints one
    line and exits with the shell's status for SIGINT."""
    import magnet.eval.__main__ as eval_main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_main, "run", interrupted)
    assert eval_main.main(["sts", "--model", "stories260K"]) == 130
    assert capsys.readouterr().err == "python -m magnet.eval: interrupted\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_eval_unwritable_stdout_still_writes_out(tmp_path):
    """With stdout on a full device the result was printed first: an OSError traceback, and
    --out never written."""
    out = tmp_path / "r.json"
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "magnet.eval", "sts", "--model", "stories260K",
                            "--data", str(ROOT / "tests" / "fixtures" / "eval" / "sick"),
                            "--no-progress", "--threads", "1", "--out", str(out)],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: cannot write the result to stdout")
    assert json.loads(out.read_text())["task"] == "sts"
