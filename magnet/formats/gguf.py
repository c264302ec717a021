"""GGUF checkpoints (llama.cpp): config, float32 tensors under magnet's names, and the tokenizer.

The C core parses and dequantizes the file (``magnet._C.read_gguf``); this module only maps
llama.cpp's metadata keys and tensor names to magnet's, undoes the Q/K row permutation
llama.cpp applies to LLaMA checkpoints, and rebuilds the tokenizer the way Hugging Face
transformers does for ``AutoTokenizer.from_pretrained(..., gguf_file=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from magnet import _C
from magnet.config import ModelConfig
from magnet.formats import Loaded
from magnet.tokenizer import Tokenizer

# GGUF architectures magnet runs, and the magnet arch each maps to.
_ARCHS = {"llama": "llama", "qwen2": "llama", "gpt2": "gpt2"}

# llama.cpp token types (llama_token_type): the ones the tokenizer treats specially.
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4


def load_gguf(path: str | os.PathLike[str]) -> Loaded:
    """Read a GGUF checkpoint into a `Loaded` (config, float32 tensors, tokenizer).

    Raises FileNotFoundError for a missing file and ValueError for a malformed one or an
    architecture magnet does not run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    metadata, raw = _C.read_gguf(path)
    try:
        config = gguf_config(metadata, raw)
        tensors = _map_tensors(config, metadata["general.architecture"], raw)
        config.tie_word_embeddings = "lm_head.weight" not in tensors
        tokenizer = gguf_tokenizer(metadata) if "tokenizer.ggml.tokens" in metadata else None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return Loaded(config=config, tensors=tensors, tokenizer=tokenizer)


def _get(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """metadata[key] checked against kind; default when absent, ValueError when ill-typed."""
    if key not in meta:
        if default is None:
            raise ValueError(f"GGUF metadata is missing {key!r}")
        return default
    value = meta[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ValueError(f"GGUF metadata {key!r} has unexpected value {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def gguf_config(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> ModelConfig:
    """The ModelConfig described by GGUF metadata (llama.cpp key names, prefixed by the arch)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError("GGUF metadata has no general.architecture")
    if arch not in _ARCHS:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; magnet reads {', '.join(sorted(_ARCHS))}"
        )
    if "rope_freqs.weight" in tensors:
        raise ValueError("GGUF rope_freqs.weight (per-dimension RoPE scaling) is not supported")
    p = arch + "."
    # llama.cpp reads attention.causal for every architecture and, when false, lets every token
    # see the whole sequence (embedding models); loading such a file as a decoder would give
    # other logits silently
    if not _get(meta, p + "attention.causal", bool, True):
        raise ValueError(
            f"GGUF {p}attention.causal = false (bidirectional attention) is not supported: "
            "magnet loads decoder (causal) models; bidirectional attention is available per "
            "call through roles (every token magnet.CONTEXT)"
        )
    # a file declaring experts needs a router and per-expert FFNs; checked before the tensors so
    # the error names the cause rather than the first expert tensor
    experts = _get(meta, p + "expert_count", int, 0)
    if experts > 0:
        raise ValueError(
            f"GGUF mixture-of-experts models are not supported ({p}expert_count = {experts})"
        )
    hidden = _get(meta, p + "embedding_length", int)
    heads = _get(meta, p + "attention.head_count", int)
    kv_heads = _get(meta, p + "attention.head_count_kv", int, heads)
    if hidden <= 0 or heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        raise ValueError(f"GGUF head counts {heads}/{kv_heads} do not fit hidden size {hidden}")
    head_dim = _get(meta, p + "attention.key_length", int, hidden // heads)
    value_dim = _get(meta, p + "attention.value_length", int, head_dim)
    if value_dim != head_dim:
        raise ValueError(f"GGUF {p}attention.value_length {value_dim} differs from key_length "
                         f"{head_dim}; magnet needs them equal")
    if arch != "gpt2":
        rotary = _get(meta, p + "rope.dimension_count", int, head_dim)
        if rotary != head_dim:
            raise ValueError(f"GGUF {p}rope.dimension_count {rotary} differs from the head size "
                             f"{head_dim}: partial rotary embeddings are not supported")
        attn_factor = _get(meta, p + "rope.scaling.attn_factor", (int, float), 1.0)
        if attn_factor != 1.0:
            raise ValueError(f"GGUF {p}rope.scaling.attn_factor {attn_factor!r} is not supported "
                             "(magnet implements a factor of 1)")
    vocab = meta.get(p + "vocab_size")
    if not isinstance(vocab, int):
        emb = tensors.get("token_embd.weight")
        if emb is None:
            raise ValueError("GGUF file has no token_embd.weight")
        vocab = int(emb.shape[0])
    if arch == "gpt2":
        eps = _get(meta, p + "attention.layer_norm_epsilon", float, 1e-5)
    else:
        # transformers' default for a file without the key (LlamaConfig, Qwen2Config: 1e-6)
        eps = _get(meta, p + "attention.layer_norm_rms_epsilon", float, 1e-6)
    rope_type, rope_factor, rope_orig, rope_theta = "default", 1.0, 0, 10000.0
    if arch != "gpt2":  # GPT-2 has learned positions: its rope.* keys mean nothing (llama.cpp)
        rope_theta = float(_get(meta, p + "rope.freq_base", (int, float), 10000.0))
        # as llama.cpp reads them: the type defaults to linear, the factor to the pre-2023 key
        # rope.scale_linear, and a factor of 0 or 1 scales nothing
        scaling = meta.get(p + "rope.scaling.type", "linear")
        factor_key = p + ("rope.scaling.factor" if p + "rope.scaling.factor" in meta
                          else "rope.scale_linear")
        factor = _get(meta, factor_key, (int, float), 0.0)
        if scaling == "linear":
            if factor < 0 or not np.isfinite(factor):
                raise ValueError(f"GGUF RoPE scaling factor {factor!r} is not a positive number")
            if factor not in (0.0, 1.0):
                rope_type, rope_factor = "linear", float(factor)
        elif scaling not in ("none", ""):
            raise ValueError(f"unsupported GGUF RoPE scaling {scaling!r}")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        arch=_ARCHS[arch],
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=_get(meta, p + "block_count", int),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_get(meta, p + "feed_forward_length", int),
        max_positions=_get(meta, p + "context_length", int, 2048),
        norm_eps=float(eps),
        rope_theta=rope_theta,
        rope_type=rope_type,
        rope_factor=rope_factor,
        rope_original_max_positions=rope_orig,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        eos_token_ids=_end_of_generation_ids(meta, eos, vocab),
        model_type=arch,
        source={k: v for k, v in meta.items() if not isinstance(v, list)},
    )


def _end_of_generation_ids(meta: dict[str, Any], eos: Any, vocab: int) -> tuple[int, ...]:
    """The ids that end generation: EOS, then end-of-turn and end-of-message when the file
    names them (llama.cpp stops at all three; Llama 3 Instruct's EOS is <|end_of_text|> while a
    turn ends at <|eot_id|>). Saved as generation_config.json's list by save_pretrained."""
    tokens = meta.get("tokenizer.ggml.tokens")
    # an id must index both the logits and the vocabulary the tokenizer is built from
    limit = min(vocab, len(tokens)) if isinstance(tokens, list) else vocab
    ids = [eos] if isinstance(eos, int) else []
    for k in ("eot", "eom"):
        key = f"tokenizer.ggml.{k}_token_id"
        v = meta.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not (isinstance(v, int) and 0 <= v < limit):
            raise ValueError(f"GGUF {key} {v!r} is not a token id")
        if v not in ids:
            ids.append(v)
    return tuple(ids)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation.

    llama.cpp's converter reorders each head's rows from Hugging Face's half-split layout
    (rotate_half pairs dimension i with i + d/2) into interleaved pairs (2i, 2i+1) for its own
    RoPE kernel: rows viewed as [head, 2, d/2] become [head, d/2, 2]. The inverse swaps back.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot split {rows} Q/K rows into {n_head} heads of even size")
    half = rows // n_head // 2
    out = w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.ascontiguousarray(out)


# llama.cpp tensor suffixes (after "blk.{i}.") and magnet's names (after "layers.{i}.").
_LAYER_NAMES = {
    "attn_norm": "attn_norm",
    "attn_q": "wq",
    "attn_k": "wk",
    "attn_v": "wv",
    "attn_output": "wo",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "w_gate",
    "ffn_up": "w_up",
    "ffn_down": "w_down",
}


def _is_expert_tensor(parts: list[str]) -> bool:
    """Whether blk.{i}.<kind>... is a mixture-of-experts tensor in llama.cpp's naming: the router
    (ffn_gate_inp), stacked experts (ffn_*_exps), shared experts (ffn_*_shexp), the router's
    bias (exp_probs_b), or the early per-expert layout blk.{i}.ffn_up.{e}.weight."""
    if len(parts) < 3:
        return False
    kind = parts[2]
    if (kind.startswith("ffn_gate_inp") or kind.endswith(("_exps", "_shexp"))
            or kind.startswith("exp_probs")):
        return True
    return len(parts) == 5 and kind in ("ffn_gate", "ffn_up", "ffn_down") and parts[3].isdigit()


def _map_tensors(
    config: ModelConfig, arch: str, raw: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Rename llama.cpp tensors to magnet's parameter names, splitting and unpermuting."""
    out: dict[str, np.ndarray] = {}
    permute = arch == "llama"  # llama.cpp permutes Q/K for LLaMA only (not Qwen2, not GPT-2)
    D = config.hidden_size
    for name, arr in raw.items():
        if name == "token_embd.weight":
            out["tok_embeddings"] = arr
        elif name == "position_embd.weight":
            out["pos_embeddings"] = arr
        elif name.startswith("output_norm."):
            out["final_norm." + name.split(".", 1)[1]] = arr
        elif name == "output.weight":
            out["lm_head.weight"] = arr
        elif name.startswith("blk."):
            parts = name.split(".")
            if _is_expert_tensor(parts):
                raise ValueError(f"GGUF tensor {name!r} belongs to a mixture-of-experts layer; "
                                 "mixture-of-experts models are not supported")
            if len(parts) != 4 or not parts[1].isdigit():
                raise ValueError(f"unexpected GGUF tensor {name!r}")
            layer, kind, leaf = int(parts[1]), parts[2], parts[3]
            if layer >= config.num_layers:
                raise ValueError(f"GGUF tensor {name!r} is past block_count {config.num_layers}")
            prefix = f"layers.{layer}."
            if kind == "attn_qkv":
                # GPT-2 keeps Q, K and V fused as [3*D, D] rows (or a [3*D] bias)
                if arr.shape[0] != 3 * D:
                    raise ValueError(
                        f"GGUF tensor {name!r} has shape {arr.shape}, expected 3*{D} rows"
                    )
                for i, m in enumerate(("wq", "wk", "wv")):
                    out[f"{prefix}{m}.{leaf}"] = np.ascontiguousarray(arr[i * D : (i + 1) * D])
                continue
            if kind not in _LAYER_NAMES:
                raise ValueError(f"unexpected GGUF tensor {name!r}")
            if permute and kind == "attn_q":
                arr = _unpermute(arr, config.num_heads)
            elif permute and kind == "attn_k":
                arr = _unpermute(arr, config.num_kv_heads)
            out[f"{prefix}{_LAYER_NAMES[kind]}.{leaf}"] = arr
        else:
            raise ValueError(f"unexpected GGUF tensor {name!r}")
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


# tokenizer.ggml.pre names whose text split is not GPT-2's: Llama 3's (numbers in groups of up
# to three) and Qwen2's (single digits). The regexes are those of the original tokenizers.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5's: Qwen2's, with combining marks (\p{M}) kept in words
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    """SmolLM's split, as its own tokenizer.json and llama.cpp's "smollm" do it: every digit (any
    Unicode number) on its own, then GPT-2's split of the pieces between. Not one regex: GPT-2's
    split of a piece ending before a digit keeps a run of spaces whole ("  1." is "  ", "1", "."),
    where on the whole text the last space would go with the digit. (transformers' GGUF loader
    falls back to GPT-2's split here, which differs on such text.)"""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


# Tekken's (Mistral-Nemo) and GPT-4o's (o200k: cased words, contractions) splits, likewise.
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                + _CONTRACTION +
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                + _CONTRACTION +
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# the names transformers' GGUF loader maps (llama.cpp's pre-tokenizer types of the same name):
# a split regex, or the pre-tokenizer itself where one regex cannot say it ("smollm", which
# transformers gets wrong: see _digits_then_gpt2)
_PRE_SPLITS: dict[str, str | Callable[[], pre_tokenizers.PreTokenizer]] = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "falcon-h1",
                     "dbrx", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "smollm": _digits_then_gpt2,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


def gguf_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer GGUF metadata describes, built as transformers builds it for a GGUF file
    (so the ids match ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError("GGUF tokenizer.ggml.tokens must be a list of strings")
    types = meta.get("tokenizer.ggml.token_type") or []
    merges_meta = meta.get("tokenizer.ggml.merges")
    special_ids = {
        k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")
    }
    for k, v in special_ids.items():
        if v is not None and not (isinstance(v, int) and 0 <= v < len(tokens)):
            raise ValueError(f"GGUF tokenizer.ggml.{k}_token_id {v!r} is not a token id")

    if kind == "gpt2":
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        vocab = {
            t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
            for i, t in enumerate(tokens)
        }
        if not isinstance(merges_meta, list):
            raise ValueError("GGUF byte-level BPE tokenizer has no tokenizer.ggml.merges")
        backend = tokenizers.Tokenizer(_bpe(
            vocab, _split_merges(merges_meta), dropout=None, continuing_subword_prefix="",
            end_of_word_suffix="", fuse_unk=False,
        ))
        split = _PRE_SPLITS.get(meta.get("tokenizer.ggml.pre"))
        if split is None:  # GPT-2's own split (also unknown names, as transformers)
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        elif callable(split):
            backend.pre_tokenizer = split()
        else:  # the split the vocabulary's merges were learned with, then the byte alphabet
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        backend.decoder = decoders.ByteLevel()
        control_ok = alphabet  # a "control" token outside the alphabet is a llama.cpp mislabel
        add_bos_default = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        default_specials = {"unknown": "<|endoftext|>", "bos": "<|endoftext|>",
                            "eos": "<|endoftext|>"}
    elif kind == "llama":
        vocab = {t: i for i, t in enumerate(tokens)}
        if isinstance(merges_meta, list):
            merges = _split_merges(merges_meta)
        else:
            scores = meta.get("tokenizer.ggml.scores")
            if (not isinstance(scores, list) or len(scores) != len(tokens)
                    or not all(isinstance(x, (int, float)) for x in scores)):
                raise ValueError("GGUF SentencePiece tokenizer has neither merges nor scores")
            merges = _merges_from_scores(vocab, dict(zip(tokens, scores, strict=False)))
        backend = tokenizers.Tokenizer(
            _bpe(vocab, merges, fuse_unk=True, byte_fallback=True, dropout=None)
        )
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        backend.decoder = decoders.Sequence([
            decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
            decoders.Strip(content=" ", left=1),
        ])
        control_ok = None
        # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise
        add_bos_default = bool(meta.get("tokenizer.ggml.add_bos_token", True))
        default_specials = {"unknown": "<unk>", "bos": "<s>", "eos": "</s>"}
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r} (magnet reads gpt2, llama)")

    specials = [
        t for t, ty in zip(tokens, types, strict=False)
        if ty == _TOKEN_CONTROL and (control_ok is None or set(t) <= control_ok)
    ]
    # transformers also registers the bos/eos/unk/pad strings as special tokens; a default
    # string the vocabulary lacks would get an id past the model's embeddings (Llama 3 has no
    # <|endoftext|>), so only strings of the vocabulary are registered
    in_vocab = set(tokens)
    for k in ("unknown", "bos", "eos", "padding"):
        tid = special_ids[k]
        default = default_specials.get(k)
        specials.append(tokens[tid] if tid is not None else
                        default if default in in_vocab else None)
    seen: set[str] = set()
    added = []
    for t in specials:
        if t is not None and t not in seen:
            seen.add(t)
            added.append(tokenizers.AddedToken(t, normalized=False, special=True))
    backend.add_special_tokens(added)
    user = [
        tokenizers.AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, types, strict=False)
        if ty == _TOKEN_USER_DEFINED and t in vocab
    ]
    if user:
        backend.add_tokens(user)
    template = meta.get("tokenizer.chat_template")
    return Tokenizer(backend, special_ids["bos"], special_ids["eos"], add_bos_default,
                     chat_template=template if isinstance(template, str) else None,
                     add_eos_default=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                     # as transformers: only the ids the file gives (no default strings)
                     pad_id=special_ids["padding"], unk_id=special_ids["unknown"])


def _split_merges(merges_meta: list[Any]) -> list[tuple[str, str]]:
    """tokenizer.ggml.merges entries ("a b") as pairs, split at the first space after the first
    character as llama.cpp does; ValueError for anything else."""
    merges = []
    for m in merges_meta:
        cut = m.find(" ", 1) if isinstance(m, str) else -1
        if cut < 0:
            raise ValueError(f"GGUF tokenizer.ggml.merges entry {m!r} is not two tokens")
        merges.append((m[:cut], m[cut + 1:]))
    return merges


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]], **kwargs: Any) -> models.BPE:
    try:
        return models.BPE(vocab=vocab, merges=merges, **kwargs)
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise ValueError(f"GGUF tokenizer cannot be built: {e}") from None


def _merges_from_scores(
    vocab: dict[str, int], scores: dict[str, float]
) -> list[tuple[str, str]]:
    """BPE merges a SentencePiece vocabulary implies, in transformers' order: every split of a
    token into two vocabulary pieces (pieces' ids ascending within a token), then a stable sort
    by the token's score, best first, longer left and right pieces first on ties."""
    merges: list[tuple[str, str, float]] = []
    for merge, score in scores.items():
        local = [
            (merge[:i], merge[i:], score)
            for i in range(1, len(merge))
            if merge[:i] in vocab and merge[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(m[0], m[1]) for m in merges]
