"""Model.from_pretrained: which format a path resolves to, the hub path (with a stand-in for
huggingface_hub: no test reaches the hub), and the errors for paths that are not models."""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import magnet
from magnet.model import EMBEDDED_MODELS

STORIES = EMBEDDED_MODELS["stories260K"]


def fake_hub(monkeypatch: pytest.MonkeyPatch, repo: Path | None, error: Exception | None = None
             ) -> dict:
    """A huggingface_hub whose snapshot_download lays out the files of ``repo`` that match
    allow_patterns as the real one's cache does (snapshots/<rev>/<file>, each a relative link
    to a blob in ../../blobs), or raises ``error``."""
    calls: dict = {}

    def snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls["repo_id"] = repo_id
        if error is not None:
            raise error
        cache = repo.parent / f"cache-{repo.name}"
        out = cache / "snapshots" / "0123abcd"
        out.mkdir(parents=True, exist_ok=True)
        (cache / "blobs").mkdir(exist_ok=True)
        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, pat) for pat in allow_patterns):
                blob = f"blob-{f.name}"
                shutil.copy2(f, cache / "blobs" / blob)
                (out / f.name).unlink(missing_ok=True)
                (out / f.name).symlink_to(Path("..") / ".." / "blobs" / blob)
        return str(out)

    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls


def test_hub_id_loads_as_its_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot brings every file a local directory is read for: the adapter and the
    generation config too (they were left behind, so a hub id lost its LoRA and EOS ids)."""
    m = magnet.Model.from_pretrained("stories260K")
    m.adapt(["Once upon a time there was a dog who liked to run in the park."] * 8, steps=2,
            batch_size=2, seq_len=16, lr=1e-2, progress=False)
    m.config.eos_token_ids = (2, 7)
    repo = m.save_pretrained(tmp_path / "org-model", merge_lora=False)
    local = magnet.Model.from_pretrained(repo)
    calls = fake_hub(monkeypatch, repo)
    hub = magnet.Model.from_pretrained("org/model")
    assert calls["repo_id"] == "org/model"
    assert hub._c.lora_info() == local._c.lora_info() is not None
    assert hub.config.eos_token_ids == local.config.eos_token_ids == (2, 7)
    np.testing.assert_array_equal(hub.logits([1, 5, 9]), local.logits([1, 5, 9]))


def test_a_sharded_hub_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of a hub snapshot is a link into the cache's blobs: a shard was refused as
    "outside the model directory" because the check followed the link."""
    hf_models = pytest.importorskip("tests.hf_models")
    repo = tmp_path / "org-sharded"
    hf_models.make_checkpoint("llama", repo).save_pretrained(repo, max_shard_size="40KB")
    (repo / "model.safetensors").unlink(missing_ok=True)
    assert (repo / "model.safetensors.index.json").is_file()
    local = magnet.Model.from_pretrained(repo)
    fake_hub(monkeypatch, repo)
    hub = magnet.Model.from_pretrained("org/sharded")
    np.testing.assert_array_equal(hub.logits([1, 5, 9]), local.logits([1, 5, 9]))


def test_hub_failure_names_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, None, OSError("offline"))
    with pytest.raises(FileNotFoundError, match=r"'org/missing' is not a local path.*offline"):
        magnet.Model.from_pretrained("org/missing")


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path is empty"):
        magnet.Model.from_pretrained("")
    with pytest.raises(ValueError, match="tokenizer= names the tokenizer file of a llama2.c"):
        magnet.Model.from_pretrained(tmp_path_gguf(tmp_path), tokenizer=STORIES / "tok512.bin")


def tmp_path_gguf(tmp_path: Path) -> Path:
    """A copy of a saved HF directory stands in for a non-llama2.c model."""
    d = tmp_path / "hf"
    if not d.exists():
        magnet.Model.from_pretrained("stories260K").save_pretrained(d)
    return d


def test_gguf_suffix_in_any_case_and_several_ggufs(tmp_path: Path, smollm2_gguf: Path) -> None:
    upper = tmp_path / "one" / "MODEL.GGUF"
    upper.parent.mkdir()
    upper.symlink_to(smollm2_gguf)
    assert magnet.Model.from_pretrained(upper).config.vocab_size == 49152
    assert magnet.Model.from_pretrained(upper.parent).config.vocab_size == 49152
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").symlink_to(smollm2_gguf)
    (two / "b.gguf").symlink_to(smollm2_gguf)
    shutil.copy2(STORIES / "stories260K.bin", two / "stories260K.bin")
    with pytest.raises(ValueError, match="holds 2 .gguf files"):
        magnet.Model.from_pretrained(two)


def test_saved_config_round_trips_eos_ids(tmp_path: Path) -> None:
    m = magnet.Model.from_pretrained("stories260K")
    m.config.eos_token_ids = (2, 5)
    out = m.save_pretrained(tmp_path / "s")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 5]
    assert magnet.Model.from_pretrained(out).config.eos_token_ids == (2, 5)


def test_saved_tokenizer_gives_the_same_ids_in_magnet_and_transformers(tmp_path: Path) -> None:
    """stories260K keeps typed "<s>"/"<unk>" as plain text and adds BOS: the saved folder says
    both (split_special_tokens, a BOS post-processor), so a reload and AutoTokenizer agree."""
    transformers = pytest.importorskip("transformers")
    m = magnet.Model.from_pretrained("stories260K")
    out = m.save_pretrained(tmp_path / "s")
    again = magnet.Model.from_pretrained(out)
    hf = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("Once upon a time <s> there </s> was", "<unk> hi", "Tom ran.", ""):
        ids = m.tokenizer.encode(text)
        assert again.tokenizer.encode(text) == ids, text
        assert hf(text)["input_ids"] == ids, text
    assert (hf.bos_token, hf.eos_token) == ("<s>", "</s>")


def test_saved_gguf_model_keeps_its_chat_template(tmp_path: Path, smollm2_gguf: Path) -> None:
    transformers = pytest.importorskip("transformers")
    m = magnet.Model.from_pretrained(smollm2_gguf)
    assert m.tokenizer.chat_template and "<|im_start|>" in m.tokenizer.chat_template
    out = m.save_pretrained(tmp_path / "s")
    assert magnet.Model.from_pretrained(out).tokenizer.chat_template == m.tokenizer.chat_template
    hf = transformers.AutoTokenizer.from_pretrained(out)
    text = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert hf(text, add_special_tokens=True)["input_ids"] == m.tokenizer.encode(text)
