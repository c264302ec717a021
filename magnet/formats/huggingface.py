"""Hugging Face model directories: config.json, (sharded) safetensors, tokenizer.json."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tokenizers
from tokenizers import processors

from magnet import _C
from magnet.config import ModelConfig
from magnet.formats import Loaded
from magnet.tokenizer import Tokenizer

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "smollm", "smollm2", "smollm3")


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


# transformers' per-family defaults for fields a config.json may omit
_DEFAULT_THETA = {"smollm3": 2_000_000.0}  # the others: 10000
_DEFAULT_TIED = {"smollm3": True}  # the others: untied


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either transformers 5 (`rope_parameters`) or 4 (`rope_scaling`). As in
    transformers, a non-empty `rope_scaling` replaces `rope_parameters` whole, and a theta that
    neither names comes from the top-level `rope_theta`, else the family's default."""
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    if params.get("type") is not None and params.get("rope_type") is None:
        params["rope_type"] = params["type"]  # legacy key
    default_theta = _DEFAULT_THETA.get(cfg.get("model_type", ""), 10000.0)
    theta = _get(params, "rope_theta", default=_get(cfg, "rope_theta", default=default_theta))
    rope_type = params.get("rope_type") or "default"
    out: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(
            f"unsupported rope_scaling type {rope_type!r}: magnet implements default, linear "
            f"and llama3"
        )
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        out["rope_low_freq_factor"] = float(params.get("low_freq_factor", 1.0))
        out["rope_high_freq_factor"] = float(params.get("high_freq_factor", 4.0))
        # transformers: a top-level value wins, else the rope dict's, else max_position_embeddings
        original = cfg.get("original_max_position_embeddings")
        if original is None:
            original = params.get("original_max_position_embeddings",
                                  cfg.get("max_position_embeddings", 2048))
        out["rope_original_max_positions"] = int(original)
    return out


def _sliding_window(cfg: dict[str, Any], model_type: str, n_layers: int) -> int:
    """The attention window when any layer has one, as transformers decides per layer (0: none).
    magnet applies it to every layer, which is exact for the sequences it accepts: the forward
    refuses a sequence longer than the window."""
    if model_type == "mistral":
        window = cfg.get("sliding_window", 4096)  # MistralConfig's default; null: none
        return int(window or 0)
    if model_type not in ("qwen2", "smollm3") or not cfg.get("use_sliding_window"):
        return 0
    window = cfg.get("sliding_window", 4096 if model_type == "qwen2" else None)
    if not window:
        return 0
    types = cfg.get("layer_types")
    if types is None and model_type == "qwen2":  # Qwen2Config: layers from max_window_layers
        first = cfg.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list):
        return 0
    return int(window) if "sliding_attention" in types[:n_layers] else 0


# config.json fields read as numbers; a wrong JSON type is a ValueError naming the field.
_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings",
               "sliding_window", "n_embd", "n_head", "n_layer", "n_positions", "n_inner")
_FLOAT_FIELDS = ("rms_norm_eps", "layer_norm_epsilon", "rope_theta")


def _check_types(cfg: dict[str, Any]) -> None:
    for key in _INT_FIELDS:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"config field {key!r} must be an integer, got {v!r}")
    for key in _FLOAT_FIELDS:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"config field {key!r} must be a number, got {v!r}")
    for key in ("rope_scaling", "rope_parameters"):
        v = cfg.get(key)
        if v is not None and not isinstance(v, dict):
            raise ValueError(f"config field {key!r} must be an object or null, got {v!r}")
    for key in ("model_type", "hidden_act", "activation_function"):
        v = cfg.get(key)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"config field {key!r} must be a string, got {v!r}")
    for key in ("num_attention_heads", "n_head"):
        if key in cfg and cfg[key] is not None and cfg[key] <= 0:
            raise ValueError(f"config field {key!r} must be positive, got {cfg[key]!r}")


def _token_ids(value: Any, key: str) -> tuple[int, ...]:
    """A token-id field that may be null, an int or a list of ints (Llama 3's EOS ids)."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"config field {key!r} must be a token id or a list of them, "
                         f"got {value!r}")
    return tuple(values)


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """Map a transformers `config.json` dict to a ModelConfig (ValueError when unsupported)."""
    _check_types(cfg)
    model_type = cfg.get("model_type", "")
    if model_type == "gpt2":
        if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"unsupported GPT-2 activation_function {cfg['activation_function']!r}"
            )
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                     "add_cross_attention"):
            if cfg.get(flag):
                raise ValueError(f"unsupported GPT-2 option {flag}=True")
        if cfg.get("scale_attn_weights") is False:
            raise ValueError("unsupported GPT-2 option scale_attn_weights=False")
        d, h = int(cfg["n_embd"]), int(cfg["n_head"])
        return ModelConfig(
            arch="gpt2",
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=d,
            num_layers=int(cfg["n_layer"]),
            num_heads=h,
            num_kv_heads=h,
            head_dim=d // h,
            intermediate_size=int(cfg.get("n_inner") or 4 * d),
            max_positions=int(cfg["n_positions"]),
            norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=(_token_ids(cfg.get("eos_token_id"), "eos_token_id") or (None,))[0],
            eos_token_ids=_token_ids(cfg.get("eos_token_id"), "eos_token_id"),
            model_type=model_type,
            source=cfg,
        )
    if model_type not in LLAMA_FAMILY:
        raise ValueError(
            f"unsupported model_type {model_type!r}: magnet supports "
            f"{', '.join(LLAMA_FAMILY)} and gpt2"
        )
    if model_type == "smollm3":
        n_layers = int(cfg["num_hidden_layers"])
        rope_layers = cfg.get("no_rope_layers")  # 1 = the layer uses RoPE, 0 = it does not
        if rope_layers is None:  # transformers' default: every interval-th layer without RoPE
            interval = int(cfg.get("no_rope_layer_interval") or 4)
            rope_layers = [int((i + 1) % interval != 0) for i in range(n_layers)]
        if not isinstance(rope_layers, list) or not all(rope_layers):
            raise ValueError("unsupported SmolLM3 config: layers without RoPE (no_rope_layers "
                             f"{rope_layers}); magnet applies RoPE in every layer")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r} (expected silu)")
    d, h = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    sliding = _sliding_window(cfg, model_type, int(cfg["num_hidden_layers"]))
    eos_ids = _token_ids(cfg.get("eos_token_id"), "eos_token_id")
    eos = eos_ids[0] if eos_ids else None
    return ModelConfig(
        arch="llama",
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=d,
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=h,
        num_kv_heads=int(cfg.get("num_key_value_heads") or h),
        head_dim=int(cfg.get("head_dim") or d // h),
        intermediate_size=int(cfg["intermediate_size"]),
        max_positions=int(cfg.get("max_position_embeddings", 2048)),
        norm_eps=float(_get(cfg, "rms_norm_eps", default=1e-6)),
        sliding_window=sliding,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings",
                                         _DEFAULT_TIED.get(model_type, False))),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=eos,
        eos_token_ids=eos_ids,
        model_type=model_type,
        source=cfg,
        **_rope(cfg),
    )


_LLAMA_NAMES = [
    (r"model\.embed_tokens\.weight", "tok_embeddings"),
    (r"model\.norm\.weight", "final_norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "layers.{}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{}.mlp_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", "layers.{}.wq.{}"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", "layers.{}.wk.{}"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", "layers.{}.wv.{}"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", "layers.{}.wo.{}"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)", "layers.{}.w_gate.{}"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", "layers.{}.w_up.{}"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", "layers.{}.w_down.{}"),
]
_LLAMA_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")

_GPT2_NAMES = [
    (r"wte\.weight", "tok_embeddings"),
    (r"wpe\.weight", "pos_embeddings"),
    (r"ln_f\.(weight|bias)", "final_norm.{}"),
    (r"h\.(\d+)\.ln_1\.(weight|bias)", "layers.{}.attn_norm.{}"),
    (r"h\.(\d+)\.ln_2\.(weight|bias)", "layers.{}.mlp_norm.{}"),
    (r"h\.(\d+)\.attn\.c_proj\.(weight|bias)", "layers.{}.wo.{}"),
    (r"h\.(\d+)\.mlp\.c_fc\.(weight|bias)", "layers.{}.w_up.{}"),
    (r"h\.(\d+)\.mlp\.c_proj\.(weight|bias)", "layers.{}.w_down.{}"),
]
# The causal-mask buffers old GPT-2 checkpoints carry; the unified rule replaces them.
_GPT2_IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def _rename(name: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, target in table:
        m = re.fullmatch(pattern, name)
        if m:
            return target.format(*m.groups())
    return None


def tensors_from_hf(config: ModelConfig, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename (and for GPT-2 transpose/split) a transformers state dict to magnet's names."""
    out: dict[str, np.ndarray] = {}
    if config.arch == "gpt2":
        d = config.hidden_size
        for name, arr in state.items():
            base = name[len("transformer."):] if name.startswith("transformer.") else name
            if _GPT2_IGNORED.fullmatch(base):
                continue
            if base == "lm_head.weight":
                out[base] = np.ascontiguousarray(arr, dtype=np.float32)
                continue
            m = re.fullmatch(r"h\.(\d+)\.attn\.c_attn\.(weight|bias)", base)
            if m:
                layer, kind = m.groups()
                # Conv1D stores [in, 3*out]; split into q, k, v in Linear's [out, in] layout
                parts = np.split(arr.T if kind == "weight" else arr, [d, 2 * d], axis=0)
                for proj, part in zip(("wq", "wk", "wv"), parts, strict=True):
                    out[f"layers.{layer}.{proj}.{kind}"] = np.ascontiguousarray(part)
                continue
            target = _rename(base, _GPT2_NAMES)
            if target is None:
                raise ValueError(f"unexpected GPT-2 tensor {name!r}")
            if base.endswith(".weight") and (".c_proj." in base or ".c_fc." in base):
                arr = arr.T  # Conv1D [in, out] -> Linear [out, in]
            out[target] = np.ascontiguousarray(arr, dtype=np.float32)
        return _untie(config, out)
    biased = _biased_projections(config)
    unused = []
    for name, arr in state.items():
        if _LLAMA_IGNORED.fullmatch(name):
            continue
        target = _rename(name, _LLAMA_NAMES)
        if target is None and not name.startswith(("model.", "lm_head.")):
            # a base model's checkpoint (LlamaModel.save_pretrained, an encoder built on one)
            # names its tensors without the "model." prefix; transformers adds it when it loads
            # one into a ...ForCausalLM, and the head then comes from the embeddings if tied
            target = _rename("model." + name, _LLAMA_NAMES)
        if target is None:
            raise ValueError(f"unexpected tensor {name!r} for model_type {config.model_type!r}")
        if target in out:  # both layouts at once: which copy is meant is not known
            raise ValueError(f"tensor {name!r} appears twice in the checkpoint, with and "
                             f"without the 'model.' prefix")
        if target.endswith(".bias") and target.split(".")[2] not in biased:
            unused.append(name)  # transformers builds that projection without a bias
            continue
        out[target] = np.ascontiguousarray(arr, dtype=np.float32)
    if unused:
        shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
        warnings.warn(f"{len(unused)} bias tensors of the checkpoint are not used: its config "
                      f"({config.model_type!r}) gives those projections no bias, and "
                      f"transformers ignores them too ({shown})", stacklevel=3)
    return _untie(config, out)


def _biased_projections(config: ModelConfig) -> set[str]:
    """The projections (magnet's names) that have a bias in transformers' model for this config:
    Qwen2's q, k and v; none in Mistral; Llama and SmolLM3 by attention_bias (q, k, v, o) and
    mlp_bias (gate, up, down)."""
    if config.model_type == "qwen2":
        return {"wq", "wk", "wv"}
    if config.model_type == "mistral":
        return set()
    source = config.source or {}
    return ({"wq", "wk", "wv", "wo"} if source.get("attention_bias") else set()) | (
        {"w_gate", "w_up", "w_down"} if source.get("mlp_bias") else set())


def _untie(config: ModelConfig, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A tied head reads the embeddings, so a stored copy of them is dropped. As transformers
    does: a stored head that differs from the embeddings is kept (the model is untied), and a
    stored head without embeddings is the embeddings."""
    if not config.tie_word_embeddings or "lm_head.weight" not in out:
        return out
    head = out.pop("lm_head.weight")
    embed = out.get("tok_embeddings")
    if embed is None:
        out["tok_embeddings"] = head
    elif not np.array_equal(head, embed):
        out["lm_head.weight"] = head
        config.tie_word_embeddings = False
    return out


def ignored_tensor(config: ModelConfig) -> Callable[[str], bool]:
    """Whether a transformers tensor name is one the model does not use (GPT-2's causal-mask
    buffers, a stored RoPE table), which need not be read at all."""
    if config.arch == "gpt2":
        return lambda name: _GPT2_IGNORED.fullmatch(name.removeprefix("transformer.")) is not None
    return lambda name: _LLAMA_IGNORED.fullmatch(name) is not None


def _unread(path: Path, ignored: Callable[[str], bool] | None) -> list[str]:
    """The tensors of the safetensors file at ``path`` that ``ignored`` names, from its JSON
    header: left unread, so their dtype does not matter (old GPT-2 files store the mask buffers
    as U8 or BOOL, which the reader does not convert). A header that cannot be read here gives
    none, and the reader reports what is wrong with the file."""
    if ignored is None:
        return []
    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError):
        return []
    return [k for k in header if k != "__metadata__" and ignored(k)]


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and ``__metadata__``), read in
    Python; ValueError for one that is not a JSON object or past the C reader's size limit,
    OSError for a file that cannot be read."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > 100_000_000:  # the C reader's limit
            raise ValueError(f"{path}: safetensors header of {size} bytes is too large")
        try:
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def read_state(directory: Path, ignored: Callable[[str], bool] | None = None
               ) -> dict[str, np.ndarray]:
    """All tensors of a directory's `model.safetensors` or sharded index, as float32, except
    those ``ignored`` names (not read)."""
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if single.is_file():
        return _C.read_safetensors(os.fspath(single), _unread(single, ignored))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in weight_map.items()
        ):
            raise ValueError(f"{index}: weight_map must map tensor names to shard file names")
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            # the name is checked, not where it leads: the hub's cache links every file of a
            # snapshot to a blob elsewhere
            parts = PurePosixPath(shard).parts
            if PurePosixPath(shard).is_absolute() or "\\" in shard or ".." in parts:
                raise ValueError(f"{index}: shard {shard!r} lies outside the model directory")
            shard_path = directory.joinpath(*parts)
            if not shard_path.exists():
                raise FileNotFoundError(f"{index}: shard {shard!r} not found in {directory}")
            if not shard_path.is_file():  # a FIFO would block the open for ever
                raise ValueError(f"{index}: shard {shard!r} is not a regular file")
            unread = _unread(shard_path, ignored)
            state.update(_C.read_safetensors(os.fspath(shard_path), unread))
            weight_map = {k: v for k, v in weight_map.items() if k not in unread}
        missing = set(weight_map) - set(state)
        if missing:
            raise ValueError(f"{index}: tensors missing from the shards: {sorted(missing)[:5]}")
        return state
    raise FileNotFoundError(
        f"{directory}: no model.safetensors or model.safetensors.index.json "
        f"(PyTorch .bin checkpoints are not supported; save with safe_serialization=True)"
    )


def _post_processor_ends(backend: tokenizers.Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a text (special tokens on):
    the special tokens leading and trailing the text's own, by the encoding's mask."""
    enc = backend.encode("a", add_special_tokens=True)
    own = [i for i, m in enumerate(enc.special_tokens_mask) if not m]
    if not own:  # the text itself vanished: nothing tells the ends apart
        return [], []
    return enc.ids[:own[0]], enc.ids[own[-1] + 1:]


def _post_processor_adds(ends: tuple[list[int], list[int]], bos_id: int | None,
                         eos_id: int | None) -> tuple[bool, bool]:
    """Whether a post-processor whose :func:`_post_processor_ends` are ``ends`` puts ``bos_id``
    first and ``eos_id`` last."""
    first, last = ends
    return (bos_id is not None and first[:1] == [bos_id],
            eos_id is not None and last[-1:] == [eos_id])


def tokenizer_to_hf(tok: Tokenizer) -> tuple[str, dict[str, Any]]:
    """`tokenizer.json` text and `tokenizer_config.json` for ``tok``, such that magnet and
    transformers' AutoTokenizer read back the ids ``tok`` gives: BOS and EOS by the
    post-processor, the special tokens named (pad and unk too), typed special-token text kept
    plain where ``tok`` keeps it so. The chat template goes in the config under
    ``chat_template`` (transformers 5 writes it to chat_template.jinja instead, and reads
    either)."""
    backend = tokenizers.Tokenizer.from_str(tok.backend.to_str())
    bos = backend.id_to_token(tok.bos_id) if tok.bos_id is not None else None
    eos = backend.id_to_token(tok.eos_id) if tok.eos_id is not None else None
    want_bos = tok.add_bos_default and bos is not None
    want_eos = tok.add_eos_default and eos is not None
    if _post_processor_adds(_post_processor_ends(backend), tok.bos_id,
                            tok.eos_id) != (want_bos, want_eos):
        first = [bos] if want_bos else []
        last = [eos] if want_eos else []
        used = dict(([(bos, tok.bos_id)] if want_bos else []) +
                    ([(eos, tok.eos_id)] if want_eos else []))
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join([*first, "$A", *last]),
            pair=" ".join([*first, "$A", *last] + [f"{t}:1" for t in (*first, "$B", *last)]),
            special_tokens=list(used.items()))
    names = {k: backend.id_to_token(i) for k, i in (("bos_token", tok.bos_id),
                                                    ("eos_token", tok.eos_id),
                                                    ("unk_token", tok.unk_id),
                                                    ("pad_token", tok.pad_id)) if i is not None}
    unk = getattr(backend.model, "unk_token", None)
    if "unk_token" not in names and isinstance(unk, str) and backend.token_to_id(unk) is not None:
        names["unk_token"] = unk  # the model's own unknown piece, when nothing else named one
    names = {k: v for k, v in names.items() if v is not None}
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                           "add_bos_token": tok.add_bos_default,
                           "add_eos_token": tok.add_eos_default,
                           **names, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                           "split_special_tokens": bool(tok.backend.encode_special_tokens)}
    if tok.chat_template is not None:
        cfg["chat_template"] = tok.chat_template
    return backend.to_str(), cfg


# tokenizer_config.json's names of special tokens (transformers' SPECIAL_TOKENS_ATTRIBUTES),
# and its lists of more (transformers 4's name, then 5's)
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")
_EXTRA_SPECIALS = ("additional_special_tokens", "extra_special_tokens")


def _token_content(value: Any) -> str | None:
    """A token of tokenizer_config.json: a string, or a serialized AddedToken's content."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _added_token(value: Any, special: bool | None) -> tokenizers.AddedToken | None:
    """``value`` (a string or a serialized AddedToken) as an AddedToken; ``special`` forces the
    flag (None: the entry's own, as transformers reads added_tokens_decoder)."""
    content = _token_content(value)
    if content is None:
        return None
    entry = value if isinstance(value, dict) else {}
    flags = {k: entry[k] for k in ("single_word", "lstrip", "rstrip", "normalized")
             if isinstance(entry.get(k), bool)}
    is_special = special if special is not None else entry.get("special") is True
    return tokenizers.AddedToken(content, special=is_special, **flags)


def _register_config_tokens(backend: tokenizers.Tokenizer, settings: dict[str, Any]) -> None:
    """Add to ``backend`` the tokens tokenizer_config.json names (added_tokens_decoder, the
    bos/eos/... names, the extra special lists) that tokenizer.json does not list as added
    tokens, as transformers' tokenizer does when it loads: typed, such a string is then one id,
    and a special one is skipped when decoding. Only strings of the vocabulary: transformers
    would give another a new id, past the model's embeddings."""
    wanted: list[tokenizers.AddedToken | None] = []
    decoder = settings.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        entries = [(int(k), v) for k, v in decoder.items() if str(k).isdigit()]
        wanted += [_added_token(v, None) for _, v in sorted(entries, key=lambda e: e[0])]
    wanted += [_added_token(settings.get(k), True) for k in _NAMED_SPECIALS]
    for key in _EXTRA_SPECIALS:
        extra = settings.get(key)
        if isinstance(extra, dict):  # transformers 5 may name them ({"image_token": "<img>"})
            extra = list(extra.values())
        if isinstance(extra, list):
            wanted += [_added_token(v, True) for v in extra]
    have = {t.content for t in backend.get_added_tokens_decoder().values()}
    new = []
    for t in wanted:
        if t is not None and t.content not in have and backend.token_to_id(t.content) is not None:
            have.add(t.content)
            new.append(t)
    if new:
        backend.add_tokens(new)


def _vocab_id(backend: tokenizers.Tokenizer, value: Any) -> int | None:
    """The id of a token tokenizer_config.json names (None: unnamed, or not in the vocabulary)."""
    content = _token_content(value)
    return backend.token_to_id(content) if content is not None else None


def read_tokenizer(directory: Path, config: ModelConfig) -> Tokenizer | None:
    """`tokenizer.json` through the tokenizers library; BOS added when the checkpoint does."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        backend = tokenizers.Tokenizer.from_file(os.fspath(path))
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
    # BOS and EOS as the tokenizer's own post-processor adds them (what transformers and
    # tokenizers do), unless tokenizer_config.json says otherwise. The post-processor's first
    # token is the BOS even where config.json names another id or none (transformers adds it
    # all the same); a post-processor that only appends (EOS) adds no BOS.
    ends = _post_processor_ends(backend)
    bos_id = ends[0][0] if ends[0] else config.bos_token_id
    add_bos, add_eos = _post_processor_adds(ends, bos_id, config.eos_token_id)
    template = None
    pad_id = unk_id = None
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            tok_settings = json.loads(tok_cfg.read_text(encoding="utf-8"))
        except ValueError:
            tok_settings = None
        if isinstance(tok_settings, dict):
            add_bos = bool(tok_settings.get("add_bos_token", add_bos))
            add_eos = bool(tok_settings.get("add_eos_token", add_eos))
            # transformers' name for typed special-token text staying plain text
            backend.encode_special_tokens = bool(tok_settings.get("split_special_tokens", False))
            if isinstance(tok_settings.get("chat_template"), str):
                template = tok_settings["chat_template"]
            _register_config_tokens(backend, tok_settings)
            pad_id = _vocab_id(backend, tok_settings.get("pad_token"))
            unk_id = _vocab_id(backend, tok_settings.get("unk_token"))
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():  # transformers 5 writes the template here; it wins over the config's
        template = jinja.read_text(encoding="utf-8")
    return Tokenizer(backend, bos_id, config.eos_token_id, add_bos_default=add_bos,
                     chat_template=template, add_eos_default=add_eos, pad_id=pad_id,
                     unk_id=unk_id)


def load_huggingface(directory: str | os.PathLike) -> Loaded:
    """Load a transformers model directory (config.json + safetensors [+ tokenizer.json])."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    try:
        config = config_from_hf(cfg)
    except KeyError as e:
        raise ValueError(f"{cfg_path}: missing field {e}") from None
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    except (TypeError, AttributeError, OverflowError, ZeroDivisionError) as e:
        # a value of a type or size the field cannot take (e.g. a list where a number belongs)
        raise ValueError(f"{cfg_path}: malformed config ({type(e).__name__}: {e})") from None
    gen_path = directory / "generation_config.json"
    if gen_path.is_file():  # transformers' generate stops at its EOS ids when it has them
        try:
            gen = json.loads(gen_path.read_text(encoding="utf-8"))
            gen_eos = _token_ids(gen.get("eos_token_id"), "eos_token_id") if isinstance(
                gen, dict) else ()
        except ValueError as e:
            raise ValueError(f"{gen_path}: {e}") from None
        if gen_eos:
            config.eos_token_ids = gen_eos
    tensors = tensors_from_hf(config, read_state(directory, ignored_tensor(config)))
    if not config.tie_word_embeddings and "lm_head.weight" not in tensors:
        said = ("says tie_word_embeddings=false" if "tie_word_embeddings" in cfg else
                f"does not set tie_word_embeddings (for {cfg.get('model_type')!r} that means "
                "false)")
        # a base model's checkpoint has no head; transformers would start one from random
        # weights, which no logits could be compared with
        raise ValueError(f"{cfg_path} {said} but the checkpoint has no lm_head.weight (a base "
                         f"model's checkpoint carries no head: set tie_word_embeddings=true "
                         f"only if the model was trained with its head tied to the embeddings)")
    return Loaded(config, tensors, read_tokenizer(directory, config))


def generation_config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A transformers `generation_config.json`: the ids that end generation."""
    ids = list(config.eos_token_ids)
    return {"bos_token_id": config.bos_token_id,
            "eos_token_id": ids[0] if len(ids) == 1 else (ids or None)}


def config_to_hf(config: ModelConfig, tensor_names: Any = ()) -> dict[str, Any]:
    """A transformers `config.json` for ``config`` (what `config_from_hf` reads back);
    ``tensor_names`` (magnet's) tell a Llama-style model's biases."""
    # the source config.json's list where it had one (Llama 3 Instruct's); generate reads the
    # ids from generation_config.json
    eos = config.source.get("eos_token_id")
    common = {"vocab_size": config.vocab_size, "bos_token_id": config.bos_token_id,
              "eos_token_id": eos if isinstance(eos, list) and eos else config.eos_token_id,
              "torch_dtype": "float32",
              "tie_word_embeddings": config.tie_word_embeddings}
    if config.arch == "gpt2":
        return {**common, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "n_embd": config.hidden_size, "n_layer": config.num_layers,
                "n_head": config.num_heads, "n_inner": config.intermediate_size,
                "n_positions": config.max_positions, "layer_norm_epsilon": config.norm_eps,
                # the source's name of the tanh GELU (both load; transformers computes them
                # a little differently)
                "activation_function": config.source.get("activation_function", "gelu_new")}
    model_type = config.model_type if config.model_type in LLAMA_FAMILY else "llama"
    arch = {"mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(
        model_type, "LlamaForCausalLM")
    rope: dict[str, Any] = {"rope_type": config.rope_type}
    if config.rope_type in ("linear", "llama3"):
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(low_freq_factor=config.rope_low_freq_factor,
                    high_freq_factor=config.rope_high_freq_factor,
                    original_max_position_embeddings=config.rope_original_max_positions)
    out = {**common, "model_type": model_type, "architectures": [arch],
           "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
           "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
           "head_dim": config.head_dim, "intermediate_size": config.intermediate_size,
           "max_position_embeddings": config.max_positions, "rms_norm_eps": config.norm_eps,
           "hidden_act": "silu", "rope_theta": config.rope_theta,
           "rope_scaling": rope if config.rope_type != "default" else None}
    if model_type == "mistral":
        out["sliding_window"] = config.sliding_window or None
    source = config.source or {}
    if model_type in ("qwen2", "smollm3") and config.sliding_window:
        # the window, and which layers have it, as the loaded config said
        out.update(use_sliding_window=True, sliding_window=config.sliding_window)
        out.update({k: source[k] for k in ("max_window_layers", "layer_types")
                    if source.get(k) is not None})
    if model_type == "smollm3":  # magnet loads SmolLM3 only with RoPE in every layer
        out["no_rope_layers"] = [1] * config.num_layers
    # the padding id the source names: config.json's, or a GGUF's (which transformers reads as
    # pad_token_id too)
    pad = source.get("pad_token_id", source.get("tokenizer.ggml.padding_token_id"))
    if "pad_token_id" in source or pad is not None:
        out["pad_token_id"] = pad
    if model_type not in ("qwen2", "mistral"):  # Llama-style: the biases the model has
        projections = {n.split(".")[2] for n in tensor_names
                       if n.startswith("layers.") and n.endswith(".bias")}
        out["attention_bias"] = bool(source.get("attention_bias")) or bool(
            projections & {"wq", "wk", "wv", "wo"})
        out["mlp_bias"] = bool(source.get("mlp_bias")) or bool(
            projections & {"w_gate", "w_up", "w_down"})
    return out


def _hf_name(name: str, table: list[tuple[str, str]]) -> str | None:
    """Inverse of `_rename`: the transformers name whose pattern maps to magnet's ``name``."""
    for pattern, target in table:
        m = re.fullmatch(re.escape(target).replace(r"\{\}", r"(\w+)"), name)
        if m:
            hf = pattern.replace(r"\.", ".")
            for g in m.groups():
                hf = re.sub(r"\([^)]*\)", g, hf, count=1)
            return hf
    return None


def tensors_to_hf(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """magnet's parameter names back to transformers' (inverse of `tensors_from_hf`)."""
    out: dict[str, np.ndarray] = {}
    gpt2 = config.arch == "gpt2"
    qkv_parts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, arr in tensors.items():
        m = re.fullmatch(r"layers\.(\d+)\.(wq|wk|wv)\.(weight|bias)", name) if gpt2 else None
        if m:  # GPT-2 keeps q, k, v fused in c_attn
            qkv_parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = arr
            continue
        if gpt2 and name == "lm_head.weight":  # an untied head sits beside the transformer
            out[name] = np.ascontiguousarray(arr)
            continue
        hf = _hf_name(name, _GPT2_NAMES if gpt2 else _LLAMA_NAMES)
        if hf is None:
            raise ValueError(f"no {'GPT-2' if gpt2 else 'Hugging Face'} name for {name!r}")
        if gpt2 and name.endswith(".weight") and name.split(".")[-2] in ("w_up", "w_down", "wo"):
            arr = arr.T  # Linear [out, in] -> Conv1D [in, out]
        out[("transformer." if gpt2 else "") + hf] = np.ascontiguousarray(arr)
    for (layer, kind), parts in qkv_parts.items():
        qkv = np.concatenate([parts["wq"], parts["wk"], parts["wv"]], axis=0)
        out[f"transformer.h.{layer}.attn.c_attn.{kind}"] = np.ascontiguousarray(
            qkv.T if kind == "weight" else qkv)
    return out


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """A float32 safetensors file (header length, JSON header padded to 8 bytes, data)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())
