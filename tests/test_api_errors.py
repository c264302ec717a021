"""Bad input to the public API raises a clear exception naming the problem, and the model keeps
working afterwards."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import magnet

hf_models = pytest.importorskip("tests.hf_models")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

VOCAB = hf_models.VOCAB
IDS = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api_errors")
    out = {}
    for name in ("llama", "gpt2"):
        hf_models.make_checkpoint(name, root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def llama(checkpoints) -> tuple[magnet.Model, np.ndarray]:
    m = magnet.Model.from_pretrained(checkpoints["llama"])
    return m, m.logits(IDS)


@pytest.fixture(scope="module")
def gpt2(checkpoints) -> tuple[magnet.Model, np.ndarray]:
    m = magnet.Model.from_pretrained(checkpoints["gpt2"])
    return m, m.logits(IDS)


def still_works(model: magnet.Model, want: np.ndarray) -> None:
    np.testing.assert_array_equal(model.logits(IDS), want)


def variant(tmp_path: Path, src: Path, config: dict | None = None,
            tensors=None) -> Path:
    """A copy of checkpoint ``src`` with config.json keys replaced (None deletes) and/or the
    safetensors rewritten by ``tensors(dict) -> dict``."""
    dst = tmp_path / "variant"
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        for k, v in config.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors:
        st = dst / "model.safetensors"
        state = safetensors_numpy.load_file(str(st))
        safetensors_numpy.save_file(tensors(state), str(st))
    return dst


# ---------------------------------------------------------------- paths


def test_missing_path(tmp_path: Path, llama) -> None:
    missing = tmp_path / "nope" / "model"
    with pytest.raises(FileNotFoundError, match="no model at .*nope"):
        magnet.Model.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        magnet.Model.from_pretrained(str(tmp_path / "nope.gguf"))
    still_works(*llama)


def test_directory_without_a_model(tmp_path: Path, llama) -> None:
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(FileNotFoundError, match="no config.json, single .gguf file or llama2.c"):
        magnet.Model.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_models.ARCH_CONFIGS["llama"]))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        magnet.Model.from_pretrained(tmp_path)
    still_works(*llama)


@pytest.mark.parametrize("name", ["model.txt", "model.safetensors", "model.pt", "model"])
def test_wrong_file_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match=f"{name}: unrecognised model file.*expected a .gguf"):
        magnet.Model.from_pretrained(path)


def test_path_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        magnet.Model.from_pretrained(3)


def test_wrong_format_behind_the_suffix(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, just text" * 2)
    with pytest.raises(ValueError, match="not a GGUF file: bad magic"):
        magnet.Model.from_pretrained(tmp_path / "x.gguf")
    (tmp_path / "y.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="header dim=0 is out of range"):
        magnet.Model.from_pretrained(tmp_path / "y.bin")


# ---------------------------------------------------------------- input_ids


@pytest.mark.parametrize("bad, match", [
    (-1, "token id -1 is out of range for vocab_size 96"),
    (VOCAB, "token id 96 is out of range for vocab_size 96"),
    (2**31 - 1, "token id 2147483647 is out of range for vocab_size 96"),
    (2**31, "token id 2147483648 is out of range for vocab_size 96"),
    (2**40, "token id 1099511627776 is out of range"),
    (-(2**31) - 1, "token id -2147483649 is out of range"),
])
def test_token_ids_out_of_range(llama, bad: int, match: str) -> None:
    m, want = llama
    ids = IDS.copy().astype(np.int64)
    ids[1, 2] = bad
    for fn in (m.logits, m.hidden_states):
        with pytest.raises(ValueError, match=match):
            fn(ids)
        with pytest.raises(ValueError, match=match):
            fn(ids[1])
    still_works(m, want)


def test_out_of_range_uint64_ids(llama) -> None:
    m, want = llama
    with pytest.raises(ValueError, match="out of range for vocab_size"):
        m.logits(np.array([2**64 - 1, 1], dtype=np.uint64))
    still_works(m, want)


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), [1.5, 2], np.array([1, 2], np.float32),
                                 ["a", "b"], [None, 1], np.array([1 + 2j])])
def test_non_integer_ids(llama, bad) -> None:
    m, want = llama
    with pytest.raises(TypeError, match="input_ids must be an integer array, got dtype"):
        m.logits(bad)
    still_works(m, want)


@pytest.mark.parametrize("empty", [[], [[]], np.zeros((0,), np.int64), np.zeros((2, 0), np.int32),
                                   np.zeros((0, 4), np.int32)])
def test_empty_input(llama, empty) -> None:
    m, want = llama
    with pytest.raises(ValueError, match="input_ids is empty"):
        m.logits(empty)
    still_works(m, want)


@pytest.mark.parametrize("shape", [(), (1, 2, 3), (2, 2, 2, 2)])
def test_wrong_rank(llama, shape) -> None:
    m, want = llama
    with pytest.raises(ValueError, match=r"input_ids must be \[T\] or \[B, T\], got shape"):
        m.logits(np.ones(shape, np.int64))
    still_works(m, want)


def test_ragged_rows(llama) -> None:
    m, want = llama
    with pytest.raises(ValueError, match="input_ids must be a rectangular integer array"):
        m.logits([[1, 2, 3], [4, 5]])
    still_works(m, want)


def test_gpt2_sequence_beyond_n_positions(gpt2) -> None:
    m, want = gpt2
    n = m.config.max_positions
    assert m.logits(np.ones(n, np.int64)).shape == (n, VOCAB)
    with pytest.raises(ValueError, match=f"sequence of {n + 1} tokens exceeds the model's {n} "
                                         "positions"):
        m.logits(np.ones(n + 1, np.int64))
    with pytest.raises(ValueError, match=f"sequence of {3 * n} tokens exceeds the model's {n} "
                                         f"positions; use sequences of at most {n} tokens"):
        m.logits(np.ones(3 * n, np.int64))  # the error names the length, not the first excess
    # positions count within a segment: two segments of n tokens each fit in one row
    seg = np.repeat([0, 1], n)
    assert m.logits(np.ones(2 * n, np.int64), segments=seg).shape == (2 * n, VOCAB)
    still_works(m, want)


# ---------------------------------------------------------------- roles and segments


@pytest.mark.parametrize("roles, exc, match", [
    (np.ones((2, 4), np.uint8), ValueError, r"roles has shape \(2, 4\), expected \(2, 5\)"),
    (np.ones(5, np.uint8), ValueError, r"roles has shape \(5,\), expected \(2, 5\)"),
    (np.ones((2, 5), np.float32), TypeError, "roles must be an integer array, got dtype float32"),
    (np.full((2, 5), 2), ValueError, r"roles values must lie in \[0, 1\] \(CONTEXT=0, SPAN=1\)"),
    (np.full((2, 5), -1), ValueError, r"roles values must lie in \[0, 1\]"),
    (np.full((2, 5), 256), ValueError, r"roles values must lie in \[0, 1\]"),
])
def test_bad_roles(llama, roles, exc, match) -> None:
    m, want = llama
    with pytest.raises(exc, match=match):
        m.logits(IDS, roles=roles)
    still_works(m, want)


@pytest.mark.parametrize("segments, exc, match", [
    (np.full((2, 5), -2), ValueError, r"segments values must lie in \[-1, 2147483647\] "
                                      r"\(-1 marks padding\)"),
    (np.full((2, 5), 2**31), ValueError, r"segments values must lie in \[-1, 2147483647\]"),
    (np.zeros((5, 2), np.int32), ValueError, r"segments has shape \(5, 2\), expected \(2, 5\)"),
    (np.zeros((2, 5)), TypeError, "segments must be an integer array, got dtype float64"),
])
def test_bad_segments(llama, segments, exc, match) -> None:
    m, want = llama
    with pytest.raises(exc, match=match):
        m.hidden_states(IDS, segments=segments)
    still_works(m, want)


def test_good_layouts_are_accepted(llama) -> None:
    m, want = llama
    np.testing.assert_array_equal(m.logits(IDS, roles=[[True] * 5] * 2,
                                           segments=[[0] * 5] * 2), want)
    out = m.logits(IDS, segments=np.full((2, 5), -1))  # all padding: zero rows, no error
    assert out.shape == (2, 5, VOCAB) and not out.any()


# ---------------------------------------------------------------- checkpoint contents


@pytest.mark.parametrize("change, match", [
    ({"model_type": "bert"}, "config.json: unsupported model_type 'bert'"),
    ({"model_type": None}, "config.json: unsupported model_type ''"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     "config.json: unsupported rope_scaling type 'yarn'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "unsupported rope_scaling type"),
    ({"rope_scaling": {"rope_type": "linear"}}, "config.json: missing field 'factor'"),
    ({"rope_scaling": 2.0}, "config.json: config field 'rope_scaling' must be an object"),
    ({"hidden_act": "gelu"}, "config.json: unsupported hidden_act 'gelu'"),
    ({"hidden_size": None}, "config.json: missing field 'hidden_size'"),
    ({"hidden_size": "32"}, "config field 'hidden_size' must be an integer, got '32'"),
    ({"hidden_size": [32]}, r"config field 'hidden_size' must be an integer, got \[32\]"),
    ({"num_attention_heads": 0}, "config field 'num_attention_heads' must be positive"),
    ({"rms_norm_eps": "small"}, "config field 'rms_norm_eps' must be a number"),
    ({"vocab_size": 2**40}, "config 'vocab_size' is out of range"),
    ({"num_hidden_layers": 3}, "missing parameter 'layers.2"),
    ({"intermediate_size": 47}, r"parameter 'layers.0.w_(gate|up|down).weight' has shape"),
])
def test_bad_config(tmp_path: Path, checkpoints, llama, change, match) -> None:
    path = variant(tmp_path, checkpoints["llama"], config=change)
    with pytest.raises(ValueError, match=match):
        magnet.Model.from_pretrained(path)
    still_works(*llama)


def test_config_json_not_an_object(tmp_path: Path, checkpoints) -> None:
    path = variant(tmp_path, checkpoints["llama"])
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: expected a JSON object"):
        magnet.Model.from_pretrained(path)
    (path / "config.json").write_text("{\"model_type\": ")
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        magnet.Model.from_pretrained(path)
    (path / "config.json").write_bytes(b"{\"model_type\": \"\xff\"}")
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        magnet.Model.from_pretrained(path)


def test_gpt2_bad_config(tmp_path: Path, checkpoints, gpt2) -> None:
    path = variant(tmp_path, checkpoints["gpt2"], config={"n_head": 0})
    with pytest.raises(ValueError, match="config field 'n_head' must be positive"):
        magnet.Model.from_pretrained(path)
    shutil.rmtree(path)
    path = variant(tmp_path, checkpoints["gpt2"], config={"activation_function": "relu"})
    with pytest.raises(ValueError, match="unsupported GPT-2 activation_function 'relu'"):
        magnet.Model.from_pretrained(path)
    still_works(*gpt2)


def test_missing_tensor(tmp_path: Path, checkpoints, llama) -> None:
    def drop(state):
        del state["model.layers.1.self_attn.o_proj.weight"]
        return state
    path = variant(tmp_path, checkpoints["llama"], tensors=drop)
    with pytest.raises(ValueError, match="missing parameter 'layers.1.wo.weight'"):
        magnet.Model.from_pretrained(path)
    still_works(*llama)


def test_tensor_of_wrong_shape(tmp_path: Path, checkpoints, llama) -> None:
    def shrink(state):
        w = state["model.layers.0.mlp.up_proj.weight"]
        state["model.layers.0.mlp.up_proj.weight"] = w[:-1].copy()
        return state
    path = variant(tmp_path, checkpoints["llama"], tensors=shrink)
    with pytest.raises(ValueError, match=r"parameter 'layers.0.w_up.weight' has shape \[47, 32\], "
                                         r"expected \[48, 32\]"):
        magnet.Model.from_pretrained(path)
    still_works(*llama)


def test_unexpected_tensor(tmp_path: Path, checkpoints, llama) -> None:
    def extra(state):
        state["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
        return state
    path = variant(tmp_path, checkpoints["llama"], tensors=extra)
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.mlp.extra.weight'"):
        magnet.Model.from_pretrained(path)
    still_works(*llama)


@pytest.mark.parametrize("dtype, name", [(np.float64, "F64"), (np.int32, "I32"),
                                         (np.int8, "I8"), (np.bool_, "BOOL")])
def test_unsupported_safetensors_dtype(tmp_path: Path, checkpoints, llama, dtype, name) -> None:
    def cast(state):
        key = "model.norm.weight"
        state[key] = state[key].astype(dtype)
        return state
    path = variant(tmp_path, checkpoints["llama"], tensors=cast)
    with pytest.raises(ValueError, match=f"'model.norm.weight'.*{name}"):
        magnet.Model.from_pretrained(path)
    still_works(*llama)


def test_bad_safetensors_index(tmp_path: Path, checkpoints, llama) -> None:
    path = variant(tmp_path, checkpoints["llama"])
    (path / "model.safetensors").rename(path / "shard.safetensors")
    os.mkfifo(path / "fifo.safetensors")
    index = path / "model.safetensors.index.json"
    for weight_map, match in [
        ([1, 2], "weight_map must map tensor names to shard file names"),
        ({"a": 3}, "weight_map must map tensor names to shard file names"),
        ({"a": "../x.safetensors"}, "lies outside the model directory"),
        ({"a": "/tmp/x.safetensors"}, "lies outside the model directory"),
        ({"a": "sub/../../x.safetensors"}, "lies outside the model directory"),
        ({"a": "fifo.safetensors"}, "'fifo.safetensors' is not a regular file"),  # hung
        ({"a": "shard.safetensors"}, r"tensors missing from the shards: \['a'\]"),
    ]:
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=match):
            magnet.Model.from_pretrained(path)
    index.write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        magnet.Model.from_pretrained(path)
    still_works(*llama)


# ---------------------------------------------------------------- threads


def test_set_num_threads_rejects_bad_values(llama) -> None:
    m, want = llama
    before = magnet.get_num_threads()
    try:
        for bad in (0, -1, 5000):
            with pytest.raises(ValueError, match=f"num_threads must be between 1 and 4096, got "
                                                 f"{bad}"):
                magnet.set_num_threads(bad)
        for bad, kind in (("2", "str"), (2.0, "float"), (True, "bool"), (None, "NoneType")):
            with pytest.raises(TypeError, match=f"num_threads must be an int, got {kind}"):
                magnet.set_num_threads(bad)
        assert magnet.get_num_threads() == before
        magnet.set_num_threads(1)
        assert magnet.get_num_threads() == 1
        still_works(m, want)
    finally:
        magnet.set_num_threads(before)


def test_adapter_and_weight_shapes_are_checked(llama) -> None:
    """A transposed matrix has the right element count but the wrong shape: rejected."""
    m, want = llama
    sd = m._c.state_dict()
    name = next(k for k, v in sd.items() if v.ndim == 2 and v.shape[0] != v.shape[1])
    bad = dict(sd)
    bad[name] = np.ascontiguousarray(sd[name].T)
    with pytest.raises(ValueError, match=rf"parameter '{name}' must be .* of shape"):
        m._c.load_state_dict(bad)
    m._c.attach_lora(2, 4.0, 1, 0)
    lsd = m._c.lora_state_dict()
    lname = next(k for k, v in lsd.items() if v.shape[0] != v.shape[1])
    lbad = dict(lsd)
    lbad[lname] = np.ascontiguousarray(lsd[lname].T)
    with pytest.raises(ValueError, match="of shape"):
        m._c.load_lora_state_dict(lbad)
    m._c.detach_lora()
    still_works(m, want)


def test_set_num_threads_takes_numpy_ints() -> None:
    n = magnet.get_num_threads()
    magnet.set_num_threads(np.int64(1))
    assert magnet.get_num_threads() == 1
    with pytest.raises(TypeError):
        magnet.set_num_threads(np.bool_(True))
    magnet.set_num_threads(n)


# ---------------------------------------------------------------- ids beyond int64, odd dtypes


@pytest.mark.parametrize("bad, value", [
    ([[1, 2**64]], 2**64),            # numpy makes an object array of these Python ints
    ([1, 2**63], 2**63),              # ... and a (lossy) float64 array of these
    ([[3, -(2**63) - 1]], -(2**63) - 1),
    (np.array([1, 2**70], dtype=object), 2**70),
])
def test_python_ints_beyond_int64_are_out_of_range(llama, bad, value) -> None:
    """All integers, too large for int64: the out-of-range error, not 'must be an integer
    array, got dtype object/float64'."""
    m, want = llama
    with pytest.raises(ValueError, match=f"token id {value} is out of range for vocab_size 96"):
        m.logits(bad)
    with pytest.raises(ValueError, match=r"segments values must lie in \[-1, 2147483647\]"):
        m.logits([[1, 2]], segments=[[0, 2**64]])
    still_works(m, want)


@pytest.mark.parametrize("dtype", ["timedelta64[s]", "datetime64[D]", "timedelta64"])
def test_time_dtypes_are_not_integer_ids(llama, dtype) -> None:
    m, want = llama
    ids = np.array([1, 2, 3], dtype)
    with pytest.raises(TypeError, match=r"input_ids must be an integer array, got dtype "
                                        + dtype.split("[")[0]):
        m.logits(ids)
    with pytest.raises(TypeError, match="roles must be an integer array"):
        m.logits([1, 2, 3], roles=ids)
    with pytest.raises(TypeError, match="input_ids must be an integer array, got dtype object"):
        m.logits(np.array([1, 2**64, ids[0]], dtype=object))  # a timedelta64 scalar inside
    still_works(m, want)


# ---------------------------------------------------------------- Tokenizer input


@pytest.fixture(scope="module")
def tok():
    from tests.tiny_text import word_tokenizer

    return word_tokenizer()


def test_tokenizer_lone_surrogate_is_named(tok) -> None:
    """It was the tokenizers library's TypeError ('TextInputSequence must be str')."""
    with pytest.raises(ValueError, match=r"text contains a lone surrogate '\\ud800' at index 3"):
        tok.encode("w5 \ud800")
    with pytest.raises(ValueError, match=r"text contains a lone surrogate '\\udfff' at index 0"):
        tok.encode("\udfff", prefix_space=False)
    with pytest.raises(ValueError, match=r"text 1 contains a lone surrogate '\\ud800' at index 1"):
        tok.encode_batch(["w5", "w\ud800", "w6"])
    assert tok.encode("w5 w6") == [1, 5, 6]


def test_tokenizer_encode_batch_takes_any_iterable_once(tok) -> None:
    texts = ["w5 w6", "w7"]
    want = [[1, 5, 6], [1, 7]]
    assert tok.encode_batch(texts) == want
    assert tok.encode_batch(t for t in texts) == want  # was [] (the type check consumed it)
    assert tok.encode_batch(iter(texts)) == want
    assert tok.encode_batch(tuple(texts), add_bos=False) == [[5, 6], [7]]
    assert tok.encode_batch(np.array(texts)) == want
    assert tok.encode_batch([]) == []
    for bad in ("w5 w6", b"w5", bytearray(b"w5")):  # a str was encoded character by character
        with pytest.raises(TypeError, match="pass a list"):
            tok.encode_batch(bad)
    with pytest.raises(TypeError, match="texts must be str, got int"):
        tok.encode_batch(["w5", 3])
    with pytest.raises(TypeError, match="texts must be a list of str, got int"):
        tok.encode_batch(5)


def test_tokenizer_decode_accepts_integer_ids(tok) -> None:
    want = "w5 w6"
    for ids in ([5, 6], (5, 6), np.array([5, 6]), np.array([5, 6], np.int32),
                np.array([5, 6], np.uint8), np.array([5, 6], np.uint64), np.array([5, 6], np.int8),
                [np.int64(5), np.uint16(6)], range(5, 7), np.array([5, 6], object)):
        assert tok.decode(ids) == want, ids
    assert tok.decode(5) == tok.decode(np.int32(5)) == tok.decode(np.array(5)) == "w5"
    assert tok.decode([]) == tok.decode(np.zeros(0, np.int64)) == ""
    assert tok.decode([95]) == "w95"
    # beyond the tokenizer's vocabulary but a valid id (a model's padded vocabulary rows, which
    # generate and infill can sample): nothing, as in transformers
    assert tok.decode([5, 96, 2**32 - 1, 6]) == want
    assert tok.decode([1, 5], skip_special_tokens=False) == "w1 w5"


@pytest.mark.parametrize("ids, match", [
    ([-1], r"token id -1 at position 0 is out of range: token ids lie in \[0, 2\*\*32\) "
           r"\(this tokenizer's vocab_size is 96\)"),  # these were raw OverflowErrors
    (np.array([5, -3]), "token id -3 at position 1 is out of range"),
    ([5, 10**6, 6, -1], "token id -1 at position 3 is out of range"),
    ([2**32], "token id 4294967296 at position 0 is out of range"),
    ([2**40], "token id 1099511627776 at position 0 is out of range"),
    ([5, 2**64], "token id 18446744073709551616 at position 1 is out of range"),
    (np.array([7, 2**64 - 1], np.uint64), "token id 18446744073709551615 at position 1"),
    ([np.int64(5), np.int64(-2)], "token id -2 at position 1 is out of range"),
    (-7, "token id -7 at position 0 is out of range"),
])
def test_tokenizer_decode_rejects_ids_out_of_range(tok, ids, match) -> None:
    with pytest.raises(ValueError, match=match):
        tok.decode(ids)


@pytest.mark.parametrize("ids, match", [
    ([5.9], r"the id at position 0 is 5\.9 \(float\)"),  # was truncated to 5
    ([5, np.float32(6)], r"the id at position 1 is np\.float32\(6\.0\) \(float32\)"),
    (np.array([5.0, 6.0]), "got an array of dtype float64"),
    ("300", "not a str"),  # decoded its characters
    (b"\x05", "not a bytes"),
    ([True, 5], r"the id at position 0 is True \(bool\)"),
    (True, r"ids must be token ids \(int\), got bool"),
    (np.array([True]), "got an array of dtype bool"),
    ([5, [6]], r"the id at position 1 is \[6\] \(list\)"),
    ([5, None], r"the id at position 1 is None"),
    (["5"], r"the id at position 0 is '5' \(str\)"),
    (None, r"ids must be token ids \(int\), got NoneType"),
    (5.0, r"ids must be token ids \(int\), got float"),
    (np.array(["5"]), "got an array of dtype <U1"),
    (np.array([1, 2], "timedelta64[s]"), "got an array of dtype timedelta64"),
    (np.timedelta64(5, "s"), r"ids must be token ids \(int\), got timedelta64"),
    ([5, np.timedelta64(5, "s")], r"the id at position 1 is np\.timedelta64"),
])
def test_tokenizer_decode_rejects_non_integers(tok, ids, match) -> None:
    with pytest.raises(TypeError, match=match):
        tok.decode(ids)


def test_tokenizer_decode_rejects_2d_arrays(tok) -> None:
    with pytest.raises(ValueError, match=r"ids must be 1-D, got shape \(1, 2\)"):
        tok.decode(np.array([[5, 6]]))


def test_a_model_cannot_be_pickled_and_says_what_to_do():
    """pickle and copy.deepcopy stopped at the C object ("cannot pickle 'magnet._C.Model'");
    the message now names save_pretrained / from_pretrained."""
    import copy
    import pickle

    m = magnet.Model.from_pretrained("stories260K")
    for f in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match="save_pretrained"):
            f(m)
