"""Model.adapt() refuses bad settings and unusable checkpoints before it touches the model or
trains a step, on the embedded stories260K model (no shared data needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import magnet
from magnet.adapt import Stage

TEXTS = [f"Once upon a time a little {w} went to the park and played with a red ball all day."
         for w in ("dog", "cat", "girl", "boy", "bird", "frog", "fox", "duck")]
SMALL = dict(batch_size=2, seq_len=24, progress=False)


@pytest.fixture
def stories():
    magnet.set_num_threads(1)  # deterministic and fast for a 260K model on a shared machine
    yield magnet.Model.from_pretrained("stories260K")
    magnet.set_num_threads(magnet._C.cpu_count())


def _snapshot(model):
    return model._c.lora_info(), model.logits([1, 5, 9, 30])


def _assert_unchanged(model, snapshot):
    info, logits = snapshot
    assert model._c.lora_info() == info
    np.testing.assert_array_equal(model.logits([1, 5, 9, 30]), logits)


@pytest.mark.parametrize("bad", [
    dict(instruction=5), dict(clip_norm="a"), dict(weights={"mntp": "x"}), dict(seed=-1),
    dict(sscl_max_tokens=1.5), dict(eval_batches=1.5, eval_data=TEXTS),
    dict(full_finetune="no"), dict(weights={"mntp": 0, "sscl": 0, "msg": 0}),
], ids=lambda bad: f"{next(iter(bad))}={next(iter(bad.values()))}")
def test_late_checked_options_fail_before_the_adapters_change(stories, bad):
    """These used to be checked after earlier adapters were merged and new ones attached."""
    stories.adapt(TEXTS, steps=2, lora_rank=4, **SMALL)
    before = _snapshot(stories)
    with pytest.raises((ValueError, TypeError)):
        stories.adapt(TEXTS, steps=1, lora_rank=8, **SMALL, **bad)
    _assert_unchanged(stories, before)


@pytest.mark.parametrize(("bad", "name"), [
    (dict(weights={"mntp": -1.0}), "weights['mntp']"),
    (dict(weights={"sscl": float("nan")}), "weights['sscl']"),
    (dict(weights={"msg": float("inf")}), "weights['msg']"),
    (dict(weights=[1, 2, 3]), "weights"),
    (dict(clip_norm=-1.0), "clip_norm"), (dict(clip_norm=float("nan")), "clip_norm"),
    (dict(sscl_max_tokens=0), "sscl_max_tokens"), (dict(sscl_max_tokens=-5), "sscl_max_tokens"),
    (dict(sscl_max_tokens=1.5), "sscl_max_tokens"),
    (dict(eval_batches=-1, eval_data=TEXTS), "eval_batches"),
    (dict(eval_batches=0, eval_data=TEXTS), "eval_batches"),
    (dict(eval_batches=1.5, eval_data=TEXTS), "eval_batches"),
    (dict(lr="1e-3"), "lr"), (dict(lr=None), "lr"), (dict(seed=1.5), "seed"),
    (dict(callback=3), "callback"),
], ids=lambda v: "" if isinstance(v, str) else f"{next(iter(v))}={next(iter(v.values()))}")
def test_bad_values_are_refused_by_name(stories, bad, name):
    with pytest.raises((ValueError, TypeError)) as e:
        stories.adapt(TEXTS, steps=1, **SMALL, **bad)
    assert str(e.value).startswith(name), str(e.value)
    assert stories._c.lora_info() is None


@pytest.mark.parametrize("kw", [dict(preset="magnet"), dict(preset="llm2vec"),
                                dict(preset="mntp", stages=[Stage(1.0, (1.0, 0.5, 0.0))]),
                                dict(pairs=[("a dog ran", "the dog was running")])],
                         ids=["magnet", "llm2vec", "mntp+sscl", "pairs"])
def test_batch_size_1_with_sscl_is_refused(stories, kw):
    """SSCL contrasts the rows of a micro-batch: one row gave a silent 0 (magnet) or a failure
    after the MNTP half (llm2vec)."""
    steps = []
    with pytest.raises(ValueError, match=r"^batch_size=1 .*SSCL"):
        stories.adapt(TEXTS, steps=4, batch_size=1, seq_len=24, progress=False,
                      callback=lambda rec: steps.append(rec["step"]), **kw)
    assert steps == [] and stories._c.lora_info() is None


def test_batch_size_1_without_sscl_trains(stories):
    r = stories.adapt(TEXTS, preset="mntp", steps=2, batch_size=1, seq_len=24, progress=False)
    assert [h["step"] for h in r.history] == [0, 1]


def test_resume_on_other_base_weights_is_refused(stories, tmp_path):
    ck = tmp_path / "ck"
    stories.adapt(TEXTS, steps=2, lora_rank=2, lr=1e-2, **SMALL)
    # other LoRA settings: the first adapters are merged into the weights, then the run starts
    stories.adapt(TEXTS, steps=2, lora_rank=4, checkpoint_dir=ck, **SMALL)
    fresh = magnet.Model.from_pretrained("stories260K")  # the weights before that merge
    before = _snapshot(fresh)
    with pytest.raises(ValueError, match=r"other base weights .* tensors differ \(layers\.0\."):
        fresh.adapt(TEXTS, steps=3, lora_rank=4, checkpoint_dir=ck, resume=True, **SMALL)
    _assert_unchanged(fresh, before)
    # the model that run trained on (its base is the merged one) resumes
    r = stories.adapt(TEXTS, steps=3, lora_rank=4, checkpoint_dir=ck, resume=True, **SMALL)
    assert [h["step"] for h in r.history] == [0, 1, 2]


@pytest.mark.parametrize(("change", "what"), [
    (dict(preset="mntp"), r"preset='magnet' \(this call: preset='mntp'\)"),
    (dict(seed=7), r"seed=0 \(this call: seed=7\)"),
    (dict(steps=1), r"steps=1 is below the step of the checkpoint .* \(2\)"),
], ids=["preset", "seed", "steps"])
def test_resume_with_other_settings_is_refused(stories, tmp_path, change, what):
    ck = tmp_path / "ck"
    magnet.Model.from_pretrained("stories260K").adapt(TEXTS, steps=2, checkpoint_dir=ck, **SMALL)
    kw = dict(steps=4, checkpoint_dir=ck, resume=True, **SMALL)
    kw.update(change)
    with pytest.raises(ValueError, match=what):
        stories.adapt(TEXTS, **kw)
    assert stories._c.lora_info() is None


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    ck = tmp_path_factory.mktemp("good")
    magnet.Model.from_pretrained("stories260K").adapt(TEXTS, steps=1, checkpoint_dir=ck,
                                                      **SMALL)
    return (ck / "checkpoint.npz").read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "zero_bytes", "byte_flipped", "bad_meta"])
def test_damaged_checkpoint_is_not_readable(stories, tmp_path, good_checkpoint, damage):
    data = good_checkpoint
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "zero_bytes":
        data = b""
    elif damage == "byte_flipped":  # inside the stored arrays: the zip's CRC check fails
        i = len(data) // 3
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    else:
        import io

        with np.load(io.BytesIO(data)) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(bytes(arrays["meta"]).decode())
        meta["position"] = "far"
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
    (tmp_path / "checkpoint.npz").write_bytes(data)
    with pytest.raises(ValueError, match="not a readable magnet checkpoint"):
        stories.adapt(TEXTS, steps=2, checkpoint_dir=tmp_path, resume=True, **SMALL)
    assert stories._c.lora_info() is None


def test_checkpoint_of_other_lora_size_restores_the_adapters(stories, tmp_path,
                                                             good_checkpoint):
    """A checkpoint whose arrays do not fit its LoRA settings fails after they were attached:
    the adapters it replaced are put back."""
    import io

    with np.load(io.BytesIO(good_checkpoint)) as z:
        arrays = {k: z[k] for k in z.files}
    for k in ("params", "m", "v"):
        arrays[k] = arrays[k][:-1]
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    stories.adapt(TEXTS, steps=2, lora_rank=4, lr=1e-2, **SMALL)
    before = _snapshot(stories)
    with pytest.raises(ValueError, match="trainer state"):
        stories.adapt(TEXTS, steps=2, checkpoint_dir=tmp_path, resume=True, **SMALL)
    _assert_unchanged(stories, before)


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_checkpoint_dir_is_checked_before_training(stories, tmp_path, where):
    (tmp_path / "f").write_text("not a directory")
    target = tmp_path / "f" if where == "file" else tmp_path / "f" / "ck"
    steps = []
    with pytest.raises(OSError, match="checkpoint_dir"):
        stories.adapt(TEXTS, steps=3, checkpoint_dir=target, checkpoint_every=1,
                      callback=lambda rec: steps.append(rec["step"]), **SMALL)
    assert steps == [] and stories._c.lora_info() is None


def test_sscl_rows_fit_the_models_positions(tmp_path):
    """An SSCL row (BOS + instruction + text + EOS) is longer than the chunk it comes from: with
    seq_len at GPT-2's 32 positions the first step failed ("sequence of 42 tokens exceeds the
    model's 32 positions"), after the adapters were attached. The text is now cut to fit."""
    from tests.hf_models import make_checkpoint
    from tests.tiny_text import word_tokenizer

    make_checkpoint("gpt2", tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    m.tokenizer = word_tokenizer(bos_id=1, eos_id=2)
    limit = m.config.max_positions
    text = " ".join(f"w{5 + i % 40}" for i in range(400))
    r = m.adapt([text] * 8, steps=1, batch_size=2, seq_len=limit, progress=False,
                instruction="w7 w8 w9 w10 w11 w12 w13 w14 w15 w16")
    assert r.steps == 1 and np.isfinite(r.history[-1]["sscl"])
    m._c.detach_lora()
    long_instruction = " ".join(["w9"] * limit)
    with pytest.raises(ValueError, match="instruction takes"):
        m.adapt([text] * 8, steps=1, batch_size=2, seq_len=16, progress=False,
                instruction=long_instruction)
    assert m._c.lora_info() is None  # refused before any adapter was attached


@pytest.mark.parametrize(("kw", "what"), [
    (dict(preset="mntp", weights={"msg": 1.0}),
     r"^weights\['msg'\] > 0 but preset 'mntp' makes no spans to generate; use preset='magnet'"),
    (dict(preset="mntp", weights={"mntp": 0.0, "msg": 1.0}),
     r"^weights\['msg'\] > 0 but preset 'mntp' makes no spans"),
    (dict(preset="llm2vec", weights={"msg": 0.5}),
     r"^weights\['msg'\] > 0 but preset 'llm2vec' makes no spans"),
    (dict(preset="mntp", stages=[Stage(1.0, (1.0, 0.0, 1.0))]),
     r"^stages\[0\] weights msg 1.0 but preset 'mntp' makes no spans"),
    (dict(preset="mntp", weights={"sscl": 0.5}),
     r"^weights\['sscl'\] > 0 but preset 'mntp' never trains sscl"),
], ids=["mntp-msg", "mntp-only-msg", "llm2vec-msg", "mntp-stage-msg", "mntp-sscl"])
def test_weight_for_an_objective_the_preset_never_computes_is_refused(stories, kw, what):
    """An MSG weight on a preset that makes no spans trained nothing (history showed msg=0.0,
    and with weights={"mntp": 0, "msg": 1} every step had a zero gradient); an override for an
    objective no stage uses would now be ignored. Both are refused before the model changes."""
    stories.adapt(TEXTS, steps=2, lora_rank=4, **SMALL)
    before = _snapshot(stories)
    steps = []
    with pytest.raises(ValueError, match=what):
        stories.adapt(TEXTS, steps=2, lora_rank=8, callback=lambda rec: steps.append(rec),
                      **SMALL, **kw)
    assert steps == []
    _assert_unchanged(stories, before)


def test_weights_override_only_the_stages_that_use_the_objective(stories):
    """On llm2vec (MNTP half, then SimCSE half) weights={"sscl": 0.5} trained SSCL in the MNTP
    half too, with last pooling; weights={"mntp": 2} trained MNTP in the SimCSE half."""
    r = stories.adapt(TEXTS, preset="llm2vec", steps=4, weights={"sscl": 0.5}, **SMALL)
    assert [h["sscl"] == 0.0 and h["mntp"] > 0 for h in r.history[:2]] == [True, True]
    for h in r.history[2:]:
        assert h["mntp"] == 0.0 and h["sscl"] > 0
        assert h["loss"] == pytest.approx(0.5 * h["sscl"])
    stories._c.detach_lora()
    r = stories.adapt(TEXTS, preset="llm2vec", steps=4, weights={"mntp": 2.0}, **SMALL)
    for h in r.history[:2]:
        assert h["sscl"] == 0.0 and h["loss"] == pytest.approx(2.0 * h["mntp"])
    assert [h["mntp"] == 0.0 and h["sscl"] > 0 for h in r.history[2:]] == [True, True]


def test_eval_losses_are_measured_on_eval_data_with_pairs(stories):
    """With pairs=, evaluation built its SSCL rows from the training pairs (always from pair 0)
    instead of eval_data. With lr=0 the weights stay as they were, so the evaluation must not
    depend on the pairs at all: the same as without pairs, and the same for other pairs."""
    evals = [f"A different evaluation sentence number {i} about a cat and a hat." for i in
             range(4)]
    kw = dict(steps=1, lr=0.0, eval_data=evals, eval_batches=2, checkpoint_every=1, **SMALL)
    runs = []
    for pairs in (None, [("a dog ran", "the dog was running"), ("it rains", "rain falls")],
                  [("the sun is hot", "the sun burns"), ("we ate", "they ate")]):
        m = magnet.Model.from_pretrained("stories260K")
        runs.append(m.adapt(TEXTS, pairs=pairs, **kw).eval_history)
    assert runs[0][0]["sscl"] > 0
    assert runs[1] == runs[0] and runs[2] == runs[0]
