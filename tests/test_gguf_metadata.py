"""GGUF metadata that changes ids or logits: the tokenizer's EOS flag, the pre-tokenizer names
transformers maps, default special strings the vocabulary lacks, RoPE keys magnet cannot honour
(refused), a missing norm epsilon, non-causal attention and experts (refused), and the
end-of-turn ids that end generation. References: transformers' GGUF loader (and llama.cpp's
semantics where transformers has none). Also EOS flags of Hugging Face tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet.formats.gguf import _bytes_to_unicode, gguf_config, gguf_tokenizer
from magnet.generation import eos_ids_of, generate_ids

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _byte_alphabet() -> list[str]:
    """GPT-2's byte alphabet, byte 0 to 255 (the first 256 tokens of a byte-level vocabulary)."""
    table = _bytes_to_unicode()
    return [table[b] for b in range(256)]


def _write(path: Path, meta: dict, tensors: dict[str, np.ndarray] | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    for key, (kind, value) in meta.items():
        getattr(w, f"add_{kind}")(key, value)
    for name, arr in (tensors or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tokenizer_file(path: Path, pre: str = "gpt-2", **extra) -> Path:
    """A byte-level BPE vocabulary: the 256 bytes, three merges and <|endoftext|>."""
    toks = [*_byte_alphabet(), "12", "123", "ĊĊ", "<|endoftext|>"]
    meta = {"llama.block_count": ("uint32", 1), "llama.context_length": ("uint32", 64),
            "llama.embedding_length": ("uint32", 8), "llama.feed_forward_length": ("uint32", 16),
            "llama.attention.head_count": ("uint32", 2),
            "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", pre),
            "tokenizer.ggml.tokens": ("array", toks),
            "tokenizer.ggml.token_type": ("array", [1] * (len(toks) - 1) + [3]),
            "tokenizer.ggml.merges": ("array", ["1 2", "12 3", "Ċ Ċ"]),
            "tokenizer.ggml.bos_token_id": ("uint32", len(toks) - 1),
            "tokenizer.ggml.eos_token_id": ("uint32", len(toks) - 1)}
    meta.update(extra)
    return _write(path, meta)


def _model_file(path: Path, *, drop: tuple[str, ...] = (), argmax: int | None = None,
                more_tensors: dict[str, np.ndarray] | None = None, **extra) -> Path:
    """A tiny random Llama (hidden 32, 4 heads of 8, 2 KV heads) whose vocabulary has no
    <|endoftext|>, as Llama 3's has none. ``argmax``: a token every position predicts (greedy
    generation repeats it); ``more_tensors`` are written after the model's own."""
    rng = np.random.default_rng(0)
    V, D, H, KV, F, hd = 96, 32, 4, 2, 48, 8

    def r(*shape):
        return (rng.standard_normal(shape) * 0.15).astype(np.float32)

    toks = _byte_alphabet()[:V - 1]
    toks.append(toks[0] + toks[1])
    meta = {"llama.block_count": ("uint32", 2), "llama.context_length": ("uint32", 128),
            "llama.embedding_length": ("uint32", D), "llama.feed_forward_length": ("uint32", F),
            "llama.attention.head_count": ("uint32", H),
            "llama.attention.head_count_kv": ("uint32", KV),
            "llama.rope.dimension_count": ("uint32", hd),
            "llama.rope.freq_base": ("float32", 10000.0),
            "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-6),
            "tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", "gpt-2"),
            "tokenizer.ggml.tokens": ("array", toks),
            "tokenizer.ggml.token_type": ("array", [1] * V),
            "tokenizer.ggml.merges": ("array", [f"{toks[0]} {toks[1]}"]),
            "tokenizer.ggml.bos_token_id": ("uint32", 0),
            "tokenizer.ggml.eos_token_id": ("uint32", 1)}
    for k in drop:
        meta.pop(k)
    meta.update(extra)
    tensors = {"token_embd.weight": r(V, D)}
    for i in range(2):
        for name, shape in (("attn_norm", (D,)), ("attn_q", (H * hd, D)), ("attn_k", (KV * hd, D)),
                            ("attn_v", (KV * hd, D)), ("attn_output", (D, H * hd)),
                            ("ffn_norm", (D,)), ("ffn_gate", (F, D)), ("ffn_up", (F, D)),
                            ("ffn_down", (D, F))):
            tensors[f"blk.{i}.{name}.weight"] = r(*shape)
    tensors["output_norm.weight"] = r(D)
    tensors["output.weight"] = r(V, D)
    if argmax is not None:
        # every residual stream points along dimension 0 (the layers' small weights barely move
        # it), and only argmax's output row reads that dimension: its logit is the one above 0
        tensors["token_embd.weight"][:, 0] = 30.0
        tensors["output_norm.weight"][0] = 1.0
        tensors["output.weight"][:] = 0.0
        tensors["output.weight"][argmax, 0] = 1.0
    tensors.update(more_tensors or {})
    return _write(path, meta, tensors)


def _hf_ids(path: Path, text: str, special: bool = True) -> list[int]:
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return tok(text, add_special_tokens=special)["input_ids"]


def test_add_eos_token_appends_eos(tmp_path):
    """tokenizer.ggml.add_eos_token was ignored: transformers and llama.cpp append EOS."""
    p = _tokenizer_file(tmp_path / "t.gguf", **{"tokenizer.ggml.add_eos_token": ("bool", True)})
    tok = gguf_tokenizer(magnet._C.read_gguf(str(p))[0])
    assert tok.add_eos_default
    assert tok.encode("hello 123") == _hf_ids(p, "hello 123")
    assert tok.encode("hello 123")[-1] == tok.eos_id
    assert tok.encode("hello 123", add_eos=False) == _hf_ids(p, "hello 123", special=False)
    assert tok.encode_batch(["hello 123", "x"]) == [_hf_ids(p, "hello 123"), _hf_ids(p, "x")]


@pytest.mark.parametrize("pre", ["tekken", "pixtral", "gpt-4o", "megrez", "kormo", "llama-bpe"])
def test_pre_tokenizer_names_split_as_transformers(tmp_path, pre):
    """Names outside the Llama 3 / Qwen2 lists fell back to GPT-2's split (Mistral-Nemo's
    tekken, Mistral-Small's pixtral): "x 123 y" and blank lines came out as other ids."""
    p = _tokenizer_file(tmp_path / "t.gguf", pre=pre)
    tok = gguf_tokenizer(magnet._C.read_gguf(str(p))[0])
    for text in ("x 123 y", "a\n\nb", "Hello World's CASE", "12345 678/\n"):
        assert tok.encode(text, add_bos=False) == _hf_ids(p, text, special=False), text


def test_default_special_strings_outside_the_vocabulary_stay_text(tmp_path):
    """A byte-level vocabulary without <|endoftext|> (Llama 3) registered it anyway, with an id
    past the embeddings: an ordinary prompt then failed in logits()."""
    m = magnet.Model.from_pretrained(_model_file(tmp_path / "m.gguf"))
    ids = m.tokenizer.encode("AB<|endoftext|>CD")
    assert max(ids) < m.config.vocab_size
    assert m.tokenizer.vocab_size == m.config.vocab_size
    assert np.isfinite(m.logits(ids)).all()


@pytest.mark.parametrize("key, kind, value, match", [
    ("llama.rope.dimension_count", "uint32", 4, "partial rotary"),
    ("llama.rope.dimension_count", "uint32", 16, "rope.dimension_count"),
    ("llama.attention.value_length", "uint32", 16, "value_length"),
    ("llama.rope.scaling.attn_factor", "float32", 2.0, "attn_factor"),
])
def test_rope_keys_magnet_cannot_honour_are_refused(tmp_path, key, kind, value, match):
    """These loaded and were ignored (llama.cpp refuses the first three and scales attention by
    the fourth)."""
    p = _model_file(tmp_path / "m.gguf", **{key: (kind, value)})
    with pytest.raises(ValueError, match=match):
        magnet.Model.from_pretrained(p)


def test_a_missing_rms_epsilon_takes_transformers_default(tmp_path):
    p = _model_file(tmp_path / "m.gguf", drop=("llama.attention.layer_norm_rms_epsilon",))
    m = magnet.Model.from_pretrained(p)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                            dtype=torch.float32)
    ids = [3, 17, 42, 5, 77, 12, 9, 60]
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    assert m.config.norm_eps == ref.config.rms_norm_eps == 1e-6
    assert np.abs(m.logits(ids) - want).max() < 1e-4


def test_hf_tokenizer_eos_flag_and_its_round_trip(tmp_path):
    """A Hugging Face tokenizer whose post-processor (or tokenizer_config.json) appends EOS:
    magnet's ids equal transformers', also after save_pretrained."""
    from tokenizers import processors

    from tests.hf_models import make_checkpoint

    make_checkpoint("llama", tmp_path / "m")
    src = tmp_path / "tok"
    _tokenizer_file(tmp_path / "t.gguf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    hf.save_pretrained(src)
    backend = __import__("tokenizers").Tokenizer.from_file(str(src / "tokenizer.json"))
    eos = backend.token_to_id("~")  # an EOS id inside the tiny model's vocabulary
    backend.post_processor = processors.TemplateProcessing(
        single="$A ~", pair="$A ~ $B:1 ~:1", special_tokens=[("~", eos)])
    backend.save(str(tmp_path / "m" / "tokenizer.json"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(eos_token_id=eos, bos_token_id=None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    m = magnet.Model.from_pretrained(tmp_path / "m")
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "m" / "tokenizer.json"))
    text = "hello 123"
    assert m.tokenizer.add_eos_default and m.tokenizer.encode(text) == ref(text)["input_ids"]
    m.save_pretrained(tmp_path / "saved")
    back = magnet.Model.from_pretrained(tmp_path / "saved")
    assert back.tokenizer.encode(text) == m.tokenizer.encode(text)
    saved_ref = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert saved_ref(text)["input_ids"] == m.tokenizer.encode(text)


def test_non_causal_attention_is_refused(tmp_path):
    """attention.causal = false loaded and ran causal; llama.cpp runs such a file bidirectionally
    (logits 1.7 apart relative to their scale)."""
    p = _model_file(tmp_path / "m.gguf", **{"llama.attention.causal": ("bool", False)})
    with pytest.raises(ValueError, match=r"llama\.attention\.causal.*decoder \(causal\).*roles"):
        magnet.Model.from_pretrained(p)
    ids = [3, 17, 42, 5]
    causal = _model_file(tmp_path / "c.gguf", **{"llama.attention.causal": ("bool", True)})
    plain = _model_file(tmp_path / "p.gguf")
    assert np.array_equal(magnet.Model.from_pretrained(causal).logits(ids),
                          magnet.Model.from_pretrained(plain).logits(ids))


@pytest.mark.parametrize("key", ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"])
def test_end_of_turn_ids_end_generation(tmp_path, key):
    """eot/eom_token_id were ignored: generate ran past <|eot_id|> to max_new_tokens, where
    llama.cpp stops (Llama 3 Instruct: EOS <|end_of_text|>, turns end at <|eot_id|>)."""
    eot = 90
    types = [1] * 96
    types[eot] = 3  # CONTROL, as <|eot_id|> is: generate's text leaves it out
    p = _model_file(tmp_path / "m.gguf", argmax=eot,
                    **{key: ("uint32", eot), "tokenizer.ggml.token_type": ("array", types)})
    m = magnet.Model.from_pretrained(p)
    assert m.config.eos_token_id == 1
    assert m.config.eos_token_ids == (1, eot)
    assert eos_ids_of(m) == (1, eot)
    assert generate_ids(m, [[3, 17, 42]], max_new_tokens=5) == [[eot]]
    assert m.generate("hello", max_new_tokens=5) == ""


def test_end_of_turn_and_message_ids_together(tmp_path):
    p = _model_file(tmp_path / "m.gguf", **{"tokenizer.ggml.eot_token_id": ("uint32", 90),
                                             "tokenizer.ggml.eom_token_id": ("uint32", 91)})
    assert magnet.Model.from_pretrained(p).config.eos_token_ids == (1, 90, 91)
    same = _model_file(tmp_path / "s.gguf", **{"tokenizer.ggml.eot_token_id": ("uint32", 1)})
    assert magnet.Model.from_pretrained(same).config.eos_token_ids == (1,)


@pytest.mark.parametrize("key", ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"])
def test_end_of_turn_id_outside_the_vocabulary_is_refused(tmp_path, key):
    p = _model_file(tmp_path / "m.gguf", **{key: ("uint32", 96)})
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " 96 is not a token id"):
        magnet.Model.from_pretrained(p)


def test_mixture_of_experts_is_refused(tmp_path):
    """expert_count was not read: a file declaring experts over dense FFN tensors loaded as a
    dense model (llama.cpp refuses it), and a real MoE layout failed on its router tensor with a
    message that did not say why."""
    p = _model_file(tmp_path / "m.gguf", **{"llama.expert_count": ("uint32", 4),
                                            "llama.expert_used_count": ("uint32", 2)})
    with pytest.raises(ValueError, match=r"mixture-of-experts.*llama\.expert_count = 4"):
        magnet.Model.from_pretrained(p)
    p = _model_file(tmp_path / "z.gguf", **{"llama.expert_count": ("uint32", 0)})
    assert magnet.Model.from_pretrained(p).config.num_layers == 2
    router = {"blk.0.ffn_gate_inp.weight": np.zeros((4, 32), np.float32)}
    p = _model_file(tmp_path / "r.gguf", more_tensors=router)
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_gate_inp\.weight'.*mixture-of-experts"):
        magnet.Model.from_pretrained(p)
    experts = {"blk.1.ffn_up_exps.weight": np.zeros((4, 48, 32), np.float32)}
    p = _model_file(tmp_path / "e.gguf", more_tensors=experts)
    with pytest.raises(ValueError, match=r"'blk\.1\.ffn_up_exps\.weight'.*mixture-of-experts"):
        magnet.Model.from_pretrained(p)


def test_gpt2_ignores_rope_keys():
    """GPT-2 has no RoPE, but a rope.scaling.type other than linear/none was refused."""
    meta = {"general.architecture": "gpt2", "gpt2.block_count": 1, "gpt2.context_length": 64,
            "gpt2.embedding_length": 8, "gpt2.feed_forward_length": 16,
            "gpt2.attention.head_count": 2, "gpt2.rope.scaling.type": "yarn",
            "gpt2.rope.scaling.factor": 4.0, "gpt2.rope.freq_base": "x"}
    tensors = {"token_embd.weight": np.zeros((10, 8), np.float32)}
    config = gguf_config(meta, tensors)
    assert (config.rope_type, config.rope_factor, config.rope_theta) == ("default", 1.0, 10000.0)
    llama = {k.replace("gpt2", "llama"): v for k, v in meta.items()
             if k != "gpt2.rope.freq_base"} | {"general.architecture": "llama"}
    with pytest.raises(ValueError, match="unsupported GGUF RoPE scaling 'yarn'"):
        gguf_config(llama, tensors)
