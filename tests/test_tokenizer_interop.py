"""Tokenizers and checkpoints as transformers (and llama.cpp) read them: GGUF pre-tokenizer
names ("smollm", "qwen35"), base-model checkpoints without the "model." prefix, the chat
template of chat_template.jinja, pad and unk tokens kept through save_pretrained, special tokens
named only in tokenizer_config.json, and the BOS a tokenizer.json post-processor adds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet.config import ModelConfig
from magnet.formats.gguf import gguf_tokenizer
from magnet.formats.huggingface import read_tokenizer
from tests.hf_models import ARCH_CONFIGS, VOCAB
from tests.test_gguf import gpt2_vocab_gguf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, pre_tokenizers, processors  # noqa: E402


def _config(bos: int | None, eos: int | None) -> ModelConfig:
    """A model config for read_tokenizer, which reads only its BOS and EOS ids."""
    return ModelConfig(arch="llama", vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2,
                       num_kv_heads=2, head_dim=4, intermediate_size=8, bos_token_id=bos,
                       eos_token_id=eos)


def _word_backend() -> tokenizers.Tokenizer:
    """Words w0 .. w95, one id each, and no added tokens."""
    backend = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)},
                                                    unk_token="w3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return backend


def _tokenizer_dir(directory: Path, backend: tokenizers.Tokenizer,
                   settings: dict | None = None) -> Path:
    """A tokenizer.json and a tokenizer_config.json as given (nothing added by transformers)."""
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **(settings or {})}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


# ---- GGUF pre-tokenizer names ----------------------------------------------------------------


_DIGIT_TEXTS = ["  1. When shall we three meet againe?", "   3. item", "x \u2460 y",
                "In 2024, 1000", "\tdef f():\n        return 2", "Chapter \u216b.  12 apples",
                "I DON'T know"]


def test_smollm_pre_isolates_digits_before_gpt2_split(tmp_path: Path, shared_data: Path) -> None:
    """tokenizer.ggml.pre "smollm" fell back to GPT-2's split; SmolLM's tokenizer.json and
    llama.cpp isolate every digit first, which differs where spaces run up to a digit."""
    path = gpt2_vocab_gguf(tmp_path / "smollm.gguf", shared_data, "smollm")
    tok = gguf_tokenizer(magnet._C.read_gguf(str(path))[0])
    ref = tokenizers.Tokenizer.from_str(tok.backend.to_str())  # same vocabulary and specials
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for text in _DIGIT_TEXTS:
        assert tok.encode(text, add_bos=False) == ref.encode(text).ids, text
    spaces = [tok.backend.id_to_token(i) for i in tok.encode("  1. item", add_bos=False)]
    assert spaces[:3] == ["Ġ", "Ġ", "1"]  # GPT-2's split: "Ġ", "Ġ1"


def test_qwen35_pre_splits_as_transformers(tmp_path: Path, shared_data: Path) -> None:
    """tokenizer.ggml.pre "qwen35" (Qwen3.5: digits one by one, combining marks in words)
    fell back to GPT-2's split, grouping digit runs."""
    path = gpt2_vocab_gguf(tmp_path / "qwen35.gguf", shared_data, "qwen35")
    tok = gguf_tokenizer(magnet._C.read_gguf(str(path))[0])
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in [*_DIGIT_TEXTS, "cafe\u0301 nai\u0308ve \u0915\u093f\u0924\u093e\u092c"]:
        assert tok.encode(text, add_bos=False) == ref(text, add_special_tokens=False)[
            "input_ids"], text
    assert [tok.backend.id_to_token(i) for i in tok.encode("2024", add_bos=False)] == list("2024")


# ---- base-model checkpoints --------------------------------------------------------------------


def _base_checkpoint(name: str, directory: Path, **overrides) -> tuple[Path, object]:
    """A random ...ForCausalLM of family ``name``; its base model (LlamaModel, GPT2Model: no
    head, no "model." / "transformer." prefix) saved to ``directory``. Returns the full model."""
    torch.manual_seed(0)
    kwargs = {**ARCH_CONFIGS[name], **overrides}
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    full = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for p in full.parameters():
            p.normal_(0.0, 0.15)
    full.eval().base_model.save_pretrained(directory)
    return directory, full


@pytest.mark.parametrize("name, overrides", [
    ("llama", {"tie_word_embeddings": True}),
    ("mistral", {"tie_word_embeddings": True}),
    ("qwen2", {}),
    ("gpt2", {}),  # GPT2Model: wte/h.N without "transformer." (read before this fix too)
])
def test_base_model_checkpoint_loads_as_transformers_does(tmp_path: Path, name: str,
                                                          overrides: dict) -> None:
    """LlamaModel/MistralModel.save_pretrained names tensors without "model." and stores no
    head: "unexpected tensor 'embed_tokens.weight'". transformers loads it with the head tied
    to the embeddings."""
    directory, full = _base_checkpoint(name, tmp_path / "base", **overrides)
    names = magnet._C.read_safetensors(str(directory / "model.safetensors"), [])
    assert not any(k.startswith(("model.", "transformer.", "lm_head")) for k in names)
    ids = [3, 17, 5, 60, 9]
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(theirs, full(torch.tensor([ids])).logits[0].numpy(),
                                   atol=1e-5)
    ours = magnet.Model.from_pretrained(directory).logits(ids)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_untied_base_model_without_head_is_refused(tmp_path: Path) -> None:
    """An untied config and no lm_head: transformers would start a random head; magnet says
    why it cannot load the model."""
    directory, _ = _base_checkpoint("mistral", tmp_path / "base")  # MistralConfig: untied
    with pytest.raises(ValueError, match="no lm_head.weight.*base model"):
        magnet.Model.from_pretrained(directory)


# ---- chat_template.jinja -----------------------------------------------------------------------

_TEMPLATE = "{% for m in messages %}{{m['role']}}: {{m['content']}}\n{% endfor %}"


def _model_with_tokenizer(directory: Path, **tok_kwargs) -> object:
    """A tiny Llama saved with a transformers tokenizer over words w0 .. w95."""
    from tests.hf_models import make_checkpoint

    make_checkpoint("llama", directory)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_word_backend(), **tok_kwargs)
    tok.save_pretrained(directory)
    return tok


def test_chat_template_jinja_is_read_saved_and_downloaded(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 5 writes the template to chat_template.jinja, not tokenizer_config.json:
    magnet read none, so save_pretrained dropped it and a hub id did not download it."""
    from tests.test_loading import fake_hub

    src = tmp_path / "src"
    tok = _model_with_tokenizer(src, bos_token="w1", eos_token="w2")
    tok.chat_template = _TEMPLATE
    tok.save_pretrained(src)
    assert (src / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((src / "tokenizer_config.json").read_text())
    m = magnet.Model.from_pretrained(src)
    assert m.tokenizer.chat_template == _TEMPLATE
    out = m.save_pretrained(tmp_path / "out")
    assert magnet.Model.from_pretrained(out).tokenizer.chat_template == _TEMPLATE
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == _TEMPLATE
    fake_hub(monkeypatch, src)
    assert magnet.Model.from_pretrained("org/model").tokenizer.chat_template == _TEMPLATE


def test_chat_template_jinja_wins_over_the_config(tmp_path: Path) -> None:
    """As in transformers: the file's template, not tokenizer_config.json's."""
    d = _tokenizer_dir(tmp_path, _word_backend(), {"chat_template": "old"})
    (d / "chat_template.jinja").write_text(_TEMPLATE, encoding="utf-8")
    assert read_tokenizer(d, _config(1, 2)).chat_template == _TEMPLATE
    assert transformers.AutoTokenizer.from_pretrained(d).chat_template == _TEMPLATE


def test_saving_over_a_directory_drops_its_stale_template_file(tmp_path: Path) -> None:
    """save_pretrained writes the template into tokenizer_config.json; a chat_template.jinja
    left in the target directory would win over it when read back, so it is not carried."""
    src = tmp_path / "src"
    tok = _model_with_tokenizer(src, bos_token="w1", eos_token="w2")
    tok.chat_template = _TEMPLATE
    tok.save_pretrained(src)
    m = magnet.Model.from_pretrained(src)
    m.tokenizer.chat_template = "{{ messages[0]['content'] }}"
    m.save_pretrained(src)  # over its own source, which holds the old template's file
    assert not (src / "chat_template.jinja").exists()
    assert magnet.Model.from_pretrained(src).tokenizer.chat_template == m.tokenizer.chat_template


# ---- pad and unk tokens ------------------------------------------------------------------------


def test_pad_and_unk_survive_save_from_hf(tmp_path: Path) -> None:
    """tokenizer_config.json's pad_token and unk_token were dropped by save_pretrained, so the
    saved tokenizer could not pad a batch."""
    src = tmp_path / "src"
    _model_with_tokenizer(src, bos_token="w1", eos_token="w2", pad_token="w0", unk_token="w3")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 0}))
    m = magnet.Model.from_pretrained(src)
    assert (m.tokenizer.pad_id, m.tokenizer.unk_id) == (0, 3)
    out = m.save_pretrained(tmp_path / "out")
    before = transformers.AutoTokenizer.from_pretrained(src)
    after = transformers.AutoTokenizer.from_pretrained(out)
    assert (after.pad_token, after.unk_token) == (before.pad_token, before.unk_token) == (
        "w0", "w3")
    assert after(["w5", "w5 w6 w7"], padding=True)["input_ids"] == before(
        ["w5", "w5 w6 w7"], padding=True)["input_ids"]
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 0


def test_pad_and_unk_survive_save_from_gguf(tmp_path: Path) -> None:
    """tokenizer.ggml.padding_token_id and unknown_token_id were not kept either."""
    from tests.test_gguf_metadata import _model_file

    path = _model_file(tmp_path / "m.gguf", **{
        "tokenizer.ggml.padding_token_id": ("uint32", 5),
        "tokenizer.ggml.unknown_token_id": ("uint32", 7)})
    m = magnet.Model.from_pretrained(path)
    assert (m.tokenizer.pad_id, m.tokenizer.unk_id) == (5, 7)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    out = m.save_pretrained(tmp_path / "out")
    after = transformers.AutoTokenizer.from_pretrained(out)
    assert (after.pad_token, after.unk_token) == (ref.pad_token, ref.unk_token)
    assert (after.pad_token_id, after.unk_token_id) == (5, 7)
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 5


def test_gguf_without_pad_or_unk_names_none(tmp_path: Path) -> None:
    """As transformers: no id in the file, no pad or unk token (no default strings)."""
    from tests.test_gguf_metadata import _tokenizer_file

    path = _tokenizer_file(tmp_path / "t.gguf")
    tok = gguf_tokenizer(magnet._C.read_gguf(str(path))[0])
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert tok.pad_id is tok.unk_id is None
    assert ref.pad_token is ref.unk_token is None


# ---- special tokens named only in tokenizer_config.json ----------------------------------------


@pytest.mark.parametrize("settings", [
    {"bos_token": "w1", "eos_token": "w2"},
    {"bos_token": {"content": "w1", "__type": "AddedToken"}, "eos_token": "w2",
     "added_tokens_decoder": {"7": {"content": "w7", "special": True, "normalized": False,
                                    "lstrip": False, "rstrip": False, "single_word": False}}},
    {"extra_special_tokens": ["w7"], "bos_token": "w1", "eos_token": "w2"},
    {"bos_token": "w1", "eos_token": "w2", "pad_token": "not-in-vocab"},
])
def test_config_named_specials_are_registered(tmp_path: Path, settings: dict) -> None:
    """bos/eos (and added_tokens_decoder, extra special) strings that tokenizer.json does not
    list as added tokens: transformers matches them whole in the text and skips them when
    decoding; magnet cut them like other text."""
    d = _tokenizer_dir(tmp_path, _word_backend(), settings)
    tok = read_tokenizer(d, _config(1, 2))
    ref = transformers.AutoTokenizer.from_pretrained(d)
    for text in ("w5w1w6", "w5 w2 w6", "w4w7w4", "w8"):
        ids = ref(text, add_special_tokens=False)["input_ids"]
        if max(ids) >= VOCAB:  # transformers gave a string outside the vocabulary a new id
            continue
        assert tok.encode(text, add_bos=False) == ids, text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert tok.encode("w5w1w6", add_bos=False) == [5, 1, 6]
    assert tok.decode([5, 1, 6]) == "w5 w6"
    assert tok.vocab_size == VOCAB  # nothing outside the vocabulary was added


# ---- the BOS a post-processor adds -------------------------------------------------------------


@pytest.mark.parametrize("config_bos", [None, 0, 1])
def test_post_processor_bos_is_added_whatever_config_json_says(tmp_path: Path,
                                                               config_bos: int | None) -> None:
    """A tokenizer.json whose post-processor puts w1 first: transformers adds it; magnet added
    no BOS when config.json's bos_token_id was null or another id."""
    backend = _word_backend()
    backend.post_processor = processors.TemplateProcessing(single="w1 $A",
                                                           special_tokens=[("w1", 1)])
    d = _tokenizer_dir(tmp_path, backend)
    tok = read_tokenizer(d, _config(config_bos, 2))
    ref = transformers.AutoTokenizer.from_pretrained(d)
    assert tok.encode("w5 w6") == ref("w5 w6")["input_ids"] == [1, 5, 6]
    assert tok.bos_id == 1


def test_post_processor_appending_eos_adds_no_bos(tmp_path: Path) -> None:
    """What the check on the post-processor's first id kept working: one that appends EOS
    adds more ids than the text's, and none of them is a BOS."""
    backend = _word_backend()
    backend.post_processor = processors.TemplateProcessing(single="$A w2",
                                                           special_tokens=[("w2", 2)])
    d = _tokenizer_dir(tmp_path, backend)
    tok = read_tokenizer(d, _config(1, 2))
    ref = transformers.AutoTokenizer.from_pretrained(d)
    assert tok.encode("w5 w6") == ref("w5 w6")["input_ids"] == [5, 6, 2]
    assert (tok.add_bos_default, tok.add_eos_default, tok.bos_id) == (False, True, 1)
