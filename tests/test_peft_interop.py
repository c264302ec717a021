"""LoRA adapters between magnet and the Hugging Face stack: a directory saved with
``merge_lora=False`` loads in transformers and peft with the adapter applied, and an adapter
that peft wrote loads in magnet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import magnet
from tests.hf_models import make_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = np.array([3, 17, 42, 5, 88, 9, 61, 23])
ALL = (1 << 7) - 1
Q_AND_V = 0b101  # magnet's wq and wv: on GPT-2 two of the three blocks of the fused c_attn


def random_adapters(m: magnet.Model, rank: int, mask: int, seed: int = 0) -> None:
    """Adapters with random A and B (fresh ones have B = 0, which would hide any mix-up)."""
    m._c.attach_lora(rank, 12.0, mask, seed)
    rng = np.random.default_rng(seed)
    m._c.load_lora_state_dict({k: rng.normal(0.0, 0.3, v.shape).astype(np.float32)
                               for k, v in m._c.lora_state_dict().items()})


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.tensor(IDS[None])).logits[0].numpy()


@pytest.mark.parametrize("arch,mask", [("llama", ALL), ("qwen2", 0b1001001), ("gpt2", ALL),
                                       ("gpt2", Q_AND_V), ("gpt2-untied", 0b1100010)])
def test_unmerged_save_loads_in_transformers_and_peft(tmp_path: Path, arch: str, mask: int):
    """transformers reads the adapter_config.json beside the weights and applies the adapter;
    peft's AutoPeftModelForCausalLM finds the base through base_model_name_or_path; magnet
    reads its own adapter back bit for bit. (A GPT-2 directory failed to load at all: its
    adapter config named magnet's modules, wq, wk, ...)"""
    make_checkpoint(arch, tmp_path / "src")
    m = magnet.Model.from_pretrained(tmp_path / "src")
    base = m.logits(IDS)
    random_adapters(m, 4, mask)
    ours = m.logits(IDS)
    assert np.abs(ours - base).max() > 0.05  # the adapter matters
    out = m.save_pretrained(tmp_path / "out", merge_lora=False)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert "magnet_targets" not in cfg  # peft warns about keys it does not know
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    np.testing.assert_allclose(torch_logits(hf), ours, rtol=0, atol=1e-4)
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(out)
    np.testing.assert_allclose(torch_logits(auto), ours, rtol=0, atol=1e-4)
    again = magnet.Model.from_pretrained(out)
    assert again._c.lora_info() == m._c.lora_info()
    np.testing.assert_array_equal(again.logits(IDS), ours)


def peft_adapter(arch: str, directory: Path, **lora) -> np.ndarray:
    """Write a random tiny base and a peft LoRA adapter beside it; return peft's logits."""
    base = make_checkpoint(arch, directory)
    pm = peft.get_peft_model(base, peft.LoraConfig(**lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    pm.save_pretrained(directory)
    return torch_logits(pm)


@pytest.mark.parametrize("arch,lora", [
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    ("llama", dict(r=2, lora_alpha=4, target_modules=["o_proj", "gate_proj"],
                   layers_to_transform=[1], use_rslora=True)),
    ("qwen2", dict(r=3, lora_alpha=5, target_modules=["k_proj", "up_proj"])),
    ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
    # per-module ranks and alphas: padded to one rank, the odd scale folded into B
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                   rank_pattern={"v_proj": 2}, alpha_pattern={"up_proj": 3})),
    ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                  rank_pattern={"c_attn": 6}, alpha_pattern={"c_attn": 12}, use_rslora=True)),
])
def test_an_adapter_written_by_peft_loads(tmp_path: Path, arch: str, lora: dict):
    """peft's names and layout (GPT-2's fused c_attn, layers left out, rsLoRA's scale) give
    peft's logits. (Such a directory was refused whole: "not a magnet adapter config".)"""
    ref = peft_adapter(arch, tmp_path, **lora)
    m = magnet.Model.from_pretrained(tmp_path)
    assert m._c.lora_info()[0] == max([lora["r"], *lora.get("rank_pattern", {}).values()])
    np.testing.assert_allclose(m.logits(IDS), ref, rtol=0, atol=1e-4)


def test_a_gpt2_adapter_of_magnets_resaved_by_peft_loads_again(tmp_path: Path):
    """peft keeps rank_pattern but not magnet's metadata when it saves the adapter again: the
    file was refused ("per-module ranks")."""
    make_checkpoint("gpt2", tmp_path / "src")
    m = magnet.Model.from_pretrained(tmp_path / "src")
    random_adapters(m, 4, ALL)
    ours = m.logits(IDS)
    out = m.save_pretrained(tmp_path / "out", merge_lora=False)
    pm = peft.AutoPeftModelForCausalLM.from_pretrained(out)
    pm.save_pretrained(tmp_path / "again")
    for f in ("config.json", "model.safetensors"):  # the base beside the re-saved adapter
        (tmp_path / "again" / f).write_bytes((out / f).read_bytes())
    np.testing.assert_allclose(magnet.Model.from_pretrained(tmp_path / "again").logits(IDS),
                               ours, rtol=0, atol=1e-4)


@pytest.mark.parametrize("lora,match", [
    (dict(use_dora=True), "DoRA"),
    (dict(bias="lora_only"), "bias 'lora_only'"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
])
def test_what_magnet_cannot_hold_is_refused_by_name(tmp_path: Path, lora: dict, match: str):
    peft_adapter("llama", tmp_path, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                 **lora)
    with pytest.raises(ValueError, match=match):
        magnet.Model.from_pretrained(tmp_path)


def test_an_adapter_on_another_module_is_refused(tmp_path: Path):
    peft_adapter("llama", tmp_path, r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="unsupported adapter tensor .*lm_head"):
        magnet.Model.from_pretrained(tmp_path)


def test_an_adapter_saved_by_an_older_magnet_still_loads(tmp_path: Path):
    """Before peft's layout, GPT-2 adapters were saved under magnet's names with the targets
    in the config (``magnet_targets``)."""
    make_checkpoint("gpt2", tmp_path)
    m = magnet.Model.from_pretrained(tmp_path)
    random_adapters(m, 2, Q_AND_V)
    ours = m.logits(IDS)
    state = m._c.lora_state_dict()
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 12.0, "target_modules": ["wq", "wv"],
        "magnet_targets": ["wq", "wv"], "bias": "none"}))
    from magnet.formats.huggingface import write_safetensors

    write_safetensors(tmp_path / "adapter_model.safetensors", state)
    np.testing.assert_array_equal(magnet.Model.from_pretrained(tmp_path).logits(IDS), ours)


def test_a_broken_adapter_config_names_the_file(tmp_path: Path):
    make_checkpoint("llama", tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json: not a JSON adapter config"):
        magnet.Model.from_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors: missing"):
        magnet.Model.from_pretrained(tmp_path)
