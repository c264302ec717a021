"""Logits parity with Hugging Face transformers for every supported family (fp32)."""

from __future__ import annotations

import numpy as np
import pytest

import magnet
from tests.hf_models import ARCH_CONFIGS, VOCAB, hf_logits, make_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(ARCH_CONFIGS))
def pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ref = make_checkpoint(request.param, d)
    return request.param, ref, magnet.Model.from_pretrained(d)


def _ids(rng, shape):
    return rng.integers(0, VOCAB, size=shape)


def test_causal_logits_match(pair):
    name, ref, m = pair
    rng = np.random.default_rng(1)
    ids = _ids(rng, (2, 21))
    ours = m.logits(ids)
    roles = np.ones_like(ids, dtype=np.uint8)
    seg = np.zeros_like(ids, dtype=np.int32)
    theirs = hf_logits(ref, ids, roles, seg)
    assert np.abs(ours - theirs).max() < TOL, name
    # the default (no roles) is the causal model: also equal to HF's own causal masking
    import torch

    with torch.no_grad():
        plain = ref(input_ids=torch.as_tensor(ids)).logits.numpy()
    assert np.abs(ours - plain).max() < TOL


@pytest.mark.parametrize("layout", ["context", "mixed"])
def test_bidirectional_and_mixed_match(pair, layout):
    name, ref, m = pair
    rng = np.random.default_rng(2)
    ids = _ids(rng, (3, 17))
    if layout == "context":
        roles = np.zeros_like(ids, dtype=np.uint8)
    else:
        roles = (rng.random(ids.shape) < 0.4).astype(np.uint8)
    seg = np.zeros_like(ids, dtype=np.int32)
    ours = m.logits(ids, roles=roles, segments=seg)
    theirs = hf_logits(ref, ids, roles, seg)
    assert np.abs(ours - theirs).max() < TOL, name


def test_padding_and_packing_equal_each_sequence_alone(pair):
    name, ref, m = pair
    rng = np.random.default_rng(3)
    a, b, c = _ids(rng, 9), _ids(rng, 6), _ids(rng, 5)
    ra = (rng.random(9) < 0.5).astype(np.uint8)
    rb = np.zeros(6, np.uint8)
    rc = np.ones(5, np.uint8)
    T = 12
    ids = np.zeros((2, T), np.int64)
    roles = np.ones((2, T), np.uint8)
    seg = np.full((2, T), -1, np.int32)
    # row 0: left padding, then a
    ids[0, 3:], roles[0, 3:], seg[0, 3:] = a, ra, 0
    # row 1: b and c packed as two segments, then right padding
    ids[1, :6], roles[1, :6], seg[1, :6] = b, rb, 0
    ids[1, 6:11], roles[1, 6:11], seg[1, 6:11] = c, rc, 1
    batch = m.logits(ids, roles=roles, segments=seg)
    for row, sl, x, r in [(0, slice(3, 12), a, ra), (1, slice(0, 6), b, rb),
                          (1, slice(6, 11), c, rc)]:
        alone = m.logits(x, roles=r)
        assert np.abs(batch[row, sl] - alone).max() < 1e-5, name
        ref_alone = hf_logits(ref, x[None], r[None], np.zeros((1, len(x)), np.int32))[0]
        assert np.abs(alone - ref_alone).max() < TOL, name
    assert not batch[0, :3].any() and not batch[1, 11:].any()  # padding rows are zero


def test_hidden_states_match(pair):
    name, ref, m = pair
    import torch

    ids = _ids(np.random.default_rng(4), (1, 11))
    with torch.no_grad():
        out = ref(input_ids=torch.as_tensor(ids), output_hidden_states=True)
    ours = m.hidden_states(ids)
    theirs = out.hidden_states[-1].numpy()  # transformers applies the final norm to the last
    assert np.abs(ours - theirs).max() < TOL, name


def test_sliding_window_longer_than_input_is_rejected(tmp_path):
    make_checkpoint("mistral", tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    m.logits(np.zeros(64, np.int64))  # exactly the window: fine
    with pytest.raises(ValueError, match="sliding window"):
        m.logits(np.zeros(65, np.int64))


def test_untied_gpt2_head_survives_save(tmp_path):
    """GPT-2 with its own lm_head: loaded, used and saved as such (not tied to wte)."""
    import torch

    make_checkpoint("gpt2-untied", tmp_path / "src")
    m = magnet.Model.from_pretrained(tmp_path / "src")
    assert not m.config.tie_word_embeddings
    m.save_pretrained(tmp_path / "saved")
    ref = __import__("transformers").AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = np.arange(20) % VOCAB
    with torch.no_grad():
        theirs = ref(input_ids=torch.as_tensor(ids[None])).logits[0].numpy()
    assert np.abs(m.logits(ids) - theirs).max() < TOL


def test_smollm3_layers_without_rope_are_rejected(tmp_path):
    import json

    cfg = dict(model_type="smollm3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=128)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="layers without RoPE"):
        magnet.Model.from_pretrained(tmp_path)


def test_untied_config_without_a_head_is_rejected(tmp_path):
    import json

    make_checkpoint("qwen2", tmp_path)  # tied: the file holds no lm_head.weight
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no lm_head.weight"):
        magnet.Model.from_pretrained(tmp_path)


@pytest.mark.parametrize("adds_bos, key, want", [
    (False, None, False),  # SmolLM2's folders: model_type llama, no BOS in the post-processor
    (True, None, True),  # Mistral's, saved by transformers 5 without add_bos_token
    (True, False, False),  # tokenizer_config.json's explicit add_bos_token wins
    (False, True, True),
])
def test_tokenizer_adds_bos_as_its_post_processor_does(tmp_path, adds_bos, key, want):
    import json

    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    make_checkpoint("llama", tmp_path)  # LlamaConfig: bos_token_id 1
    backend = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)},
                                                    unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="w1 $A", special_tokens=[("w1", 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    if key is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": key}))
    m = magnet.Model.from_pretrained(tmp_path)
    assert m.tokenizer.encode("w5 w6") == ([1, 5, 6] if want else [5, 6])
