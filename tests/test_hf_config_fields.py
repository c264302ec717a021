"""config.json fields that transformers honours and magnet must read the same way: omitted
fields take each family's defaults, `rope_scaling` replaces `rope_parameters`, sliding windows
follow transformers' per-layer choice, and a tied config with a different stored head keeps it.
Each case compares logits with transformers loading the same directory (fp32)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import magnet
from tests.hf_models import VOCAB

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=None, bos_token_id=None, eos_token_id=None)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
            eos_token_id=0)


def _save(d: Path, model_type: str, **kw: Any) -> Path:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **kw)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    model.save_pretrained(d)
    return d


def _edit(d: Path, edit) -> None:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def _diff(d: Path, T: int = 24) -> float:
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager").eval()
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(1, T))
    with torch.no_grad():
        want = ref(input_ids=torch.as_tensor(ids)).logits.numpy()
    return float(np.abs(magnet.Model.from_pretrained(d).logits(ids) - want).max())


@pytest.mark.parametrize("model_type, kw", [("llama", TINY), ("qwen2", TINY), ("gpt2", GPT2)])
def test_a_tied_config_keeps_a_stored_head_that_differs(tmp_path, model_type, kw):
    """transformers does not tie a head the file stores with other values than the
    embeddings (it warns); magnet used to drop it and read the embeddings (off by 0.7)."""
    from safetensors.torch import load_file, save_file

    d = _save(tmp_path, model_type, **kw, tie_word_embeddings=True)
    state = load_file(d / "model.safetensors")
    state["lm_head.weight"] = torch.randn(VOCAB, 32, generator=torch.Generator().manual_seed(5))
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    assert _diff(d) < TOL
    m = magnet.Model.from_pretrained(d)
    assert not m.config.tie_word_embeddings
    m.save_pretrained(tmp_path / "saved")
    assert _diff(tmp_path / "saved") < TOL


def test_a_tied_config_with_only_a_head_uses_it_as_the_embeddings(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _save(tmp_path, "llama", **TINY, tie_word_embeddings=True)
    state = load_file(d / "model.safetensors")
    state["lm_head.weight"] = state.pop("model.embed_tokens.weight")
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    assert _diff(d) < TOL


def test_smollm3_defaults_are_transformers_defaults(tmp_path):
    """SmolLM3 omits rope_theta (2e6) and tie_word_embeddings (true) in its own way."""
    d = _save(tmp_path / "theta", "smollm3", **TINY,
              rope_parameters=dict(rope_type="default", rope_theta=2e6))
    _edit(d, lambda c: (c.pop("rope_parameters", None), c.pop("rope_theta", None)))
    assert _diff(d, T=60) < TOL
    assert magnet.Model.from_pretrained(d).config.rope_theta == 2e6
    d = _save(tmp_path / "tied", "smollm3", **TINY)
    _edit(d, lambda c: c.pop("tie_word_embeddings", None))
    assert _diff(d) < TOL


def test_an_omitted_tie_flag_is_named_as_omitted(tmp_path):
    d = _save(tmp_path, "llama", **TINY, tie_word_embeddings=True)
    _edit(d, lambda c: c.pop("tie_word_embeddings", None))
    with pytest.raises(ValueError, match="does not set tie_word_embeddings"):
        magnet.Model.from_pretrained(d)


def test_rope_scaling_replaces_rope_parameters(tmp_path):
    d = _save(tmp_path, "llama", **TINY)

    def edit(c):
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
        c["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}

    _edit(d, edit)
    assert _diff(d, T=120) < TOL
    cfg = magnet.Model.from_pretrained(d).config
    assert (cfg.rope_type, cfg.rope_factor, cfg.rope_theta) == ("linear", 4.0, 10000.0)


def test_llama3_rope_without_original_positions_uses_max_positions(tmp_path):
    d = _save(tmp_path, "llama", **TINY)

    def edit(c):
        c["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "rope_theta": 500000.0}

    _edit(d, edit)
    assert _diff(d, T=120) < TOL
    assert magnet.Model.from_pretrained(d).config.rope_original_max_positions == 128


def test_sliding_layers_follow_transformers(tmp_path):
    """SmolLM3's sliding layers used to be ignored (off by 0.17 past the window); Qwen2's
    window applies only to layers from max_window_layers on, so a model where no layer slides
    must accept any length."""
    d = _save(tmp_path / "smollm3", "smollm3", **TINY, use_sliding_window=True, sliding_window=4,
              layer_types=["sliding_attention", "sliding_attention"])
    assert magnet.Model.from_pretrained(d).config.sliding_window == 4
    assert _diff(d, T=4) < TOL
    with pytest.raises(ValueError, match="sliding window"):
        _diff(d, T=24)
    d = _save(tmp_path / "qwen_full", "qwen2", **TINY, use_sliding_window=True, sliding_window=4,
              max_window_layers=28)
    assert _diff(d, T=24) < TOL
    d = _save(tmp_path / "qwen_slide", "qwen2", **TINY, use_sliding_window=True,
              sliding_window=4, max_window_layers=1)
    assert _diff(d, T=4) < TOL
    with pytest.raises(ValueError, match="sliding window"):
        _diff(d, T=24)


def test_mistral_without_a_window_key_takes_transformers_default(tmp_path):
    d = _save(tmp_path, "mistral", **TINY, sliding_window=64)
    _edit(d, lambda c: c.pop("sliding_window", None))
    assert magnet.Model.from_pretrained(d).config.sliding_window == 4096


@pytest.mark.parametrize("model_type, kw", [
    ("smollm3", dict(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 1])),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    ("smollm3", dict(use_sliding_window=True, sliding_window=4,
                     layer_types=["full_attention", "sliding_attention"])),
])
def test_saved_configs_keep_rope_layers_and_windows(tmp_path, model_type, kw):
    """save_pretrained wrote neither SmolLM3's no_rope_layers (so a 4-layer model came back
    with a layer without RoPE, and was refused) nor Qwen2's or SmolLM3's sliding window."""
    d = _save(tmp_path / "src", model_type, **{**TINY, **kw})
    m = magnet.Model.from_pretrained(d)
    m.save_pretrained(tmp_path / "saved")
    back = magnet.Model.from_pretrained(tmp_path / "saved")
    assert back.config.sliding_window == m.config.sliding_window
    T = 4 if m.config.sliding_window else 24
    assert _diff(tmp_path / "saved", T=T) < TOL


@pytest.mark.parametrize("model_type, extra", [
    ("llama", {"self_attn.q_proj.bias": 32, "self_attn.k_proj.bias": 16}),
    ("llama", {"mlp.down_proj.bias": 32}),
    ("mistral", {"self_attn.o_proj.bias": 32}),
    ("qwen2", {"self_attn.o_proj.bias": 32, "mlp.up_proj.bias": 48}),
])
def test_biases_the_config_does_not_have_are_not_used(tmp_path, model_type, extra):
    """transformers builds these projections without a bias and ignores such tensors in the
    file; magnet added them (0.018 to 0.63 off). They are now left out, with a warning."""
    from safetensors.torch import load_file, save_file

    d = _save(tmp_path, model_type, **TINY)
    state = load_file(d / "model.safetensors")
    gen = torch.Generator().manual_seed(3)
    for name, size in extra.items():
        state[f"model.layers.0.{name}"] = torch.randn(size, generator=gen)
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=f"{len(extra)} bias tensors .* not used"):
        assert _diff(d) < TOL


def test_declared_biases_survive_save_pretrained(tmp_path):
    """A Llama with attention and MLP biases: used, and saved with the config flags that make
    transformers (and magnet) build them again."""
    d = _save(tmp_path / "src", "llama", attention_bias=True, mlp_bias=True, **TINY)
    assert _diff(d) < TOL
    out = magnet.Model.from_pretrained(d).save_pretrained(tmp_path / "saved")
    cfg = json.loads((Path(out) / "config.json").read_text())
    assert cfg["attention_bias"] and cfg["mlp_bias"]
    assert _diff(Path(out)) < TOL


@pytest.mark.parametrize("theta, head_dim", [(1e4, 64), (5e5, 128)])
def test_rope_frequencies_are_float32_like_transformers(tmp_path, theta, head_dim):
    """The inverse frequencies were a double power rounded once; transformers (and llama2.c)
    take the power in float32. A third of the entries differed by an ulp, which sharp
    attention at position 4096 turned into 2e-4 of logits."""
    from safetensors.torch import load_file, save_file

    kw = {**TINY, "hidden_size": 2 * head_dim, "num_attention_heads": 2,
          "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": theta}
    d = _save(tmp_path, "llama", **kw)
    state = load_file(d / "model.safetensors")
    for k in state:  # sharp attention and logits make small angle errors visible
        if "q_proj" in k or "k_proj" in k:
            state[k] = state[k] * 8
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    assert _diff(d, T=4096) < TOL


@pytest.mark.parametrize("dtype", ["float32", "uint8", "bool"])
def test_gpt2_mask_buffers_of_any_dtype_are_ignored(tmp_path, dtype):
    """Old GPT-2 checkpoints carry their causal-mask buffers (h.N.attn.bias, masked_bias);
    stored as U8 or BOOL they made the reader refuse the file, which transformers loads."""
    from safetensors.torch import load_file, save_file

    d = _save(tmp_path, "gpt2", **GPT2)
    state = load_file(d / "model.safetensors")
    n = GPT2["n_positions"]
    for layer in range(GPT2["n_layer"]):
        mask = torch.tril(torch.ones(n, n)).to(getattr(torch, dtype)).view(1, 1, n, n)
        state[f"transformer.h.{layer}.attn.bias"] = mask
        state[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    assert _diff(d) < TOL


def test_save_keeps_the_sources_eos_list_and_gelu_name(tmp_path):
    """config.json kept only the first of a list of EOS ids, and GPT-2's gelu_pytorch_tanh was
    renamed gelu_new (transformers computes the two a little differently)."""
    from tests.hf_models import make_checkpoint

    make_checkpoint("gpt2", tmp_path / "src")
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    cfg.update(activation_function="gelu_pytorch_tanh", eos_token_id=[0, 5])
    (tmp_path / "src" / "config.json").write_text(json.dumps(cfg))
    out = magnet.Model.from_pretrained(tmp_path / "src").save_pretrained(tmp_path / "out")
    saved = json.loads((out / "config.json").read_text())
    assert saved["activation_function"] == "gelu_pytorch_tanh"
    assert saved["eos_token_id"] == [0, 5]
