"""LoRA adapters in PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``), both
ways: what ``save_pretrained(merge_lora=False)`` writes, so that transformers and peft load it
as they load their own, and what magnet reads back, its own adapters and those peft wrote.

magnet keeps one adapter per projection (``layers.N.wq.lora_A`` [r, in], ``.lora_B`` [out, r])
with one rank and one alpha for all of them. PEFT names them after the transformers modules.
GPT-2 has one fused ``c_attn`` module for q, k and v: magnet's q/k/v adapters are written as a
single ``c_attn`` adapter of rank n r (A stacked, B block-diagonal), whose ``rank_pattern`` and
``alpha_pattern`` keep the scale alpha / r. The exact targets and rank are also written into the
adapter file's safetensors metadata, so that magnet reads its own adapters back bit for bit (a
block of B may be zero, so the blocks cannot be recovered from the values alone).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from magnet.config import ModelConfig
from magnet.formats.huggingface import read_safetensors_header

# magnet's projection names, in the order of the C core's target bits
TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
_LLAMA_MODULES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                  "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
                  "w_down": "mlp.down_proj"}
_GPT2_MODULES = {"wo": "attn.c_proj", "w_up": "mlp.c_fc", "w_down": "mlp.c_proj"}
_QKV = ("wq", "wk", "wv")
_LLAMA_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight")
_GPT2_KEY = re.compile(r"base_model\.model\.transformer\.h\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight")
# magnet's own adapter names (what GPT-2 adapters were saved under before peft's layout)
_OLD_NAME = re.compile(r"layers\.(\d+)\.(\w+)\.lora_([AB])")
META_TARGETS, META_RANK = "magnet_targets", "magnet_rank"


def _shapes(config: ModelConfig, target: str) -> tuple[int, int]:
    """(in, out) of a projection."""
    D, F = config.hidden_size, config.intermediate_size
    QD, KD = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"wq": (D, QD), "wk": (D, KD), "wv": (D, KD), "wo": (QD, D), "w_gate": (D, F),
            "w_up": (D, F), "w_down": (F, D)}[target]


def adapter_to_peft(config: ModelConfig, rank: int, alpha: float, targets: list[str],
                    adapter: dict[str, np.ndarray], base: str
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(adapter_config.json, tensors, safetensors metadata) of magnet's adapters.

    ``adapter``: ``layers.N.T.lora_A`` float32 [r, in] and ``.lora_B`` [out, r] per layer and
    target; ``base``: the path peft's ``AutoPeftModelForCausalLM`` loads the base model from."""
    gpt2 = config.arch == "gpt2"
    cfg: dict[str, Any] = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": gpt2, "use_rslora": False, "use_dora": False,
        "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None}
    meta = {META_TARGETS: ",".join(targets), META_RANK: str(rank)}
    tensors: dict[str, np.ndarray] = {}
    if not gpt2:
        cfg["target_modules"] = sorted(_LLAMA_MODULES[t].split(".")[1] for t in targets)
        for name, value in adapter.items():
            m = _OLD_NAME.fullmatch(name)
            if m is None:
                raise ValueError(f"not an adapter name: {name!r}")
            tensors[f"base_model.model.model.layers.{m[1]}.{_LLAMA_MODULES[m[2]]}"
                    f".lora_{m[3]}.weight"] = value
        return cfg, tensors, meta
    qkv = [t for t in _QKV if t in targets]
    modules = sorted({_GPT2_MODULES[t] for t in targets if t in _GPT2_MODULES}
                     | ({"attn.c_attn"} if qkv else set()))
    # a regex: "c_proj" alone would also name the attention's projection or the MLP's
    cfg["target_modules"] = r".*\.h\.\d+\.(" + "|".join(re.escape(m) for m in modules) + ")"
    if len(qkv) > 1:
        cfg["rank_pattern"] = {"c_attn": len(qkv) * rank}
        cfg["alpha_pattern"] = {"c_attn": len(qkv) * alpha}
    D = config.hidden_size
    for layer in range(config.num_layers):
        prefix = f"base_model.model.transformer.h.{layer}."
        for t in targets:
            if t in _GPT2_MODULES:
                for ab in "AB":
                    tensors[f"{prefix}{_GPT2_MODULES[t]}.lora_{ab}.weight"] = \
                        adapter[f"layers.{layer}.{t}.lora_{ab}"]
        if not qkv:
            continue
        A = np.concatenate([adapter[f"layers.{layer}.{t}.lora_A"] for t in qkv])
        B = np.zeros((3 * D, len(qkv) * rank), np.float32)
        for j, t in enumerate(qkv):
            i = _QKV.index(t)
            B[i * D:(i + 1) * D, j * rank:(j + 1) * rank] = adapter[f"layers.{layer}.{t}.lora_B"]
        tensors[prefix + "attn.c_attn.lora_A.weight"] = A
        tensors[prefix + "attn.c_attn.lora_B.weight"] = B
    return cfg, tensors, meta


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header ({} when it has none)."""
    meta = read_safetensors_header(path).get("__metadata__")
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _refuse_unsupported(cfg: dict[str, Any], where: Path) -> None:
    """What peft can write and magnet's adapters cannot hold, refused by name."""
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {cfg['peft_type']!r} is not supported "
                         "(magnet reads LoRA adapters)")
    unsupported = {
        "use_dora": "DoRA adapters", "modules_to_save": "modules_to_save (fully trained layers)",
        "layer_replication": "layer_replication", "lora_bias": "lora_bias",
        "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
        "target_parameters": "adapters on parameters (target_parameters)",
}
    for key, what in unsupported.items():
        if cfg.get(key):
            raise ValueError(f"{where}: {what} are not supported by magnet's LoRA")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{where}: bias {cfg['bias']!r} is not supported (only 'none')")


def adapter_from_peft(config: ModelConfig, cfg: dict[str, Any], state: dict[str, np.ndarray],
                      meta: dict[str, str], where: Path
                      ) -> tuple[int, float, list[str], dict[str, np.ndarray]]:
    """(rank, alpha, targets, magnet's adapter tensors) of an adapter written by magnet or peft.

    A (layer, target) pair the adapter leaves out (peft's ``layers_to_transform``) gets zero
    factors, which change nothing."""
    try:
        rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a LoRA adapter config ({e!r} in r / lora_alpha)") from None
    if "magnet_targets" in cfg:  # written by an older magnet: its own names, no metadata
        return _old_magnet(config, rank, alpha, cfg["magnet_targets"], state, where)
    ours = META_TARGETS in meta
    if ours:
        targets = [t for t in meta[META_TARGETS].split(",") if t]
        try:
            rank = int(meta.get(META_RANK, rank))
        except ValueError:
            raise ValueError(f"{where}: the adapter file's {META_RANK} "
                             f"{meta[META_RANK]!r} is not a rank") from None
        if any(t not in TARGETS for t in targets):
            raise ValueError(f"{where}: unknown adapter targets {targets}")
    else:
        _refuse_unsupported(cfg, where)
        targets = []
    gpt2 = config.arch == "gpt2"
    modules = {**_GPT2_MODULES, "wq": "attn.c_attn"} if gpt2 else _LLAMA_MODULES
    if any(t not in modules and not (gpt2 and t in _QKV) for t in targets):
        raise ValueError(f"{where}: adapter targets {targets} do not fit this {config.arch} "
                         "model")
    by_module = {v: k for k, v in modules.items()}
    key_re = _GPT2_KEY if gpt2 else _LLAMA_KEY
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, value in state.items():
        m = key_re.fullmatch(name)
        if m is None or m[2] not in by_module or not int(m[1]) < config.num_layers:
            raise ValueError(f"{where}: unsupported adapter tensor {name!r} for this "
                             f"{config.arch} model")
        found.setdefault((int(m[1]), m[2]), {})[m[3]] = np.asarray(value, np.float32)
    if not ours:
        named = {by_module[mod] for _, mod in found}
        targets = [t for t in TARGETS if t in named or (gpt2 and t in _QKV and "wq" in named)]
        rank, alpha = _one_rank_and_scale(found, cfg, rank, alpha, gpt2, where)
    out: dict[str, np.ndarray] = {}
    for layer in range(config.num_layers):
        for t in targets:
            mod = modules["wq" if gpt2 and t in _QKV else t]
            pair = found.get((layer, mod))
            inp, outp = _shapes(config, t)
            if pair is None:
                A, B = np.zeros((rank, inp), np.float32), np.zeros((outp, rank), np.float32)
            elif set(pair) != {"A", "B"}:
                raise ValueError(f"{where}: layer {layer} {mod} has lora_{''.join(pair)} only")
            elif gpt2 and t in _QKV:
                A, B = _split_c_attn(pair["A"], pair["B"], targets, t, rank, ours,
                                     config.hidden_size, f"{where}: layer {layer} c_attn")
            else:
                A, B = pair["A"], pair["B"]
            out[f"layers.{layer}.{t}.lora_A"], out[f"layers.{layer}.{t}.lora_B"] = A, B
    if not targets:
        raise ValueError(f"{where}: the adapter has no tensors")
    return rank, alpha, targets, out


def _pattern_value(patterns: Any, module: str, default: float) -> float:
    """peft's per-module value (rank_pattern, alpha_pattern): the first key that matches the
    end of the module's name, as peft's get_pattern_key matches it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return default


def _one_rank_and_scale(found: dict[tuple[int, str], dict[str, np.ndarray]],
                        cfg: dict[str, Any], rank: int, alpha: float, gpt2: bool, where: Path
                        ) -> tuple[int, float]:
    """One (rank, alpha) for peft's adapters, which may differ in rank and scale per module
    (rank_pattern, alpha_pattern, rsLoRA's alpha / sqrt(r)); ``found``'s factors are changed in
    place to fit it. Each is padded with zero rows of A and columns of B up to the largest
    rank (exact: they add nothing); a scale other than the common one is folded into B (one
    rounding per element)."""
    scales: dict[tuple[int, str], float] = {}
    for (layer, mod), pair in found.items():
        if set(pair) != {"A", "B"} or pair["A"].ndim != 2 or pair["B"].ndim != 2 or (
                pair["A"].shape[0] != pair["B"].shape[1]):
            raise ValueError(f"{where}: layer {layer} {mod}: lora_A and lora_B do not fit "
                             f"[r, in] and [out, r] ({[p.shape for p in pair.values()]})")
        r = pair["A"].shape[0]
        name = (f"transformer.h.{layer}.{mod}" if gpt2 else f"model.layers.{layer}.{mod}")
        a = _pattern_value(cfg.get("alpha_pattern"), name, alpha)
        scales[(layer, mod)] = a / math.sqrt(r) if cfg.get("use_rslora") else a / r
    if not found:
        return rank, alpha
    top = max(pair["A"].shape[0] for pair in found.values())
    common = max(set(scales.values()), key=list(scales.values()).count)
    for key, pair in found.items():
        A, B = pair["A"], pair["B"]
        if scales[key] != common:
            B = (B * np.float32(scales[key] / common)).astype(np.float32)
        pad = top - A.shape[0]
        if pad:
            A = np.concatenate([A, np.zeros((pad, A.shape[1]), np.float32)])
            B = np.concatenate([B, np.zeros((B.shape[0], pad), np.float32)], axis=1)
        pair["A"], pair["B"] = np.ascontiguousarray(A), np.ascontiguousarray(B)
    return top, common * top


def _split_c_attn(A: np.ndarray, B: np.ndarray, targets: list[str], t: str, rank: int,
                  ours: bool, D: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """GPT-2's fused q/k/v adapter as target t's own factors. magnet's (``ours``) stacks the
    targets' A and puts their B on the diagonal; any other shares one A among q, k and v,
    and each takes its rows of B (exactly the same products)."""
    i = _QKV.index(t)
    if A.ndim != 2 or B.ndim != 2 or B.shape[0] != 3 * D or A.shape[0] != B.shape[1]:
        raise ValueError(f"{where}: lora_A {A.shape} and lora_B {B.shape} do not fit "
                         f"[r, {D}] and [{3 * D}, r]")
    if not ours:  # (padded to the adapter's one rank already)
        return A, np.ascontiguousarray(B[i * D:(i + 1) * D])
    qkv = [q for q in _QKV if q in targets]
    j = qkv.index(t)
    if A.shape[0] != len(qkv) * rank:
        raise ValueError(f"{where}: rank {A.shape[0]}, expected {len(qkv)} x {rank}")
    return (np.ascontiguousarray(A[j * rank:(j + 1) * rank]),
            np.ascontiguousarray(B[i * D:(i + 1) * D, j * rank:(j + 1) * rank]))


def _old_magnet(config: ModelConfig, rank: int, alpha: float, targets: Any,
                state: dict[str, np.ndarray], where: Path
                ) -> tuple[int, float, list[str], dict[str, np.ndarray]]:
    """An adapter saved by magnet before it wrote peft's layout for GPT-2 and the metadata:
    ``magnet_targets`` in the config, magnet's names (GPT-2) or peft's (LLaMA family)."""
    if not isinstance(targets, list) or any(t not in TARGETS for t in targets):
        raise ValueError(f"{where}: magnet_targets must list adapter targets, got {targets!r}")
    out = {}
    by_module = {v: k for k, v in _LLAMA_MODULES.items()}
    for name, value in state.items():
        m = _OLD_NAME.fullmatch(name) or _LLAMA_KEY.fullmatch(name)
        if m is None or (m.re is _LLAMA_KEY and m[2] not in by_module):
            raise ValueError(f"{where}: unsupported adapter tensor {name!r}")
        t = m[2] if m.re is _OLD_NAME else by_module[m[2]]
        out[f"layers.{m[1]}.{t}.lora_{m[3]}"] = np.asarray(value, np.float32)
    return rank, alpha, list(targets), out
