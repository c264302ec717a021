"""save_pretrained: a Hugging Face model directory (config.json, model.safetensors, tokenizer),
with LoRA adapters merged or kept as a PEFT-style adapter, written so that a crash at any
moment leaves the previous directory intact. Files in that directory that are not model files
(notes, training checkpoints) are kept."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from magnet.formats.huggingface import (
    config_to_hf,
    generation_config_to_hf,
    tensors_to_hf,
    tokenizer_to_hf,
    write_safetensors,
)

if TYPE_CHECKING:
    from magnet.model import Model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_MODULES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                 "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
                 "w_down": "mlp.down_proj"}
_TARGET_BITS = {"wq": 0, "wk": 1, "wv": 2, "wo": 3, "w_gate": 4, "w_up": 5, "w_down": 6}


def _peft_name(name: str) -> str:
    """layers.3.wq.lora_A -> base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"""
    m = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(lora_[AB])", name)
    if m is None:
        raise ValueError(f"not an adapter name: {name!r}")
    return f"base_model.model.model.layers.{m[1]}.{_PEFT_MODULES[m[2]]}.{m[3]}.weight"


def _magnet_name(name: str) -> str:
    if name.startswith("layers."):
        return name
    m = re.fullmatch(r"base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)\.(lora_[AB])\.weight",
                     name)
    inverse = {v: k for k, v in _PEFT_MODULES.items()}
    if m is None or m[2] not in inverse:
        raise ValueError(f"unsupported adapter tensor {name!r}")
    return f"layers.{m[1]}.{inverse[m[2]]}.{m[3]}"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


# What save_pretrained writes, and what would contradict it if left beside it (other weight
# files, shards and their index, a stale adapter). Everything else in an existing directory
# belongs to the user (notes, checkpoints, other files) and is carried into the new one.
_OWNED = re.compile(r"config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json"
                    r"|model\.safetensors|model\.safetensors\.index\.json"
                    r"|model-\d+-of-\d+\.safetensors|pytorch_model.*\.bin(\.index\.json)?"
                    r"|adapter_config\.json|adapter_model\.safetensors")


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link costs no space or time; copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path) -> None:
    """Put the user's entries of the directory being replaced into its replacement."""
    for entry in os.scandir(old):
        dst = new / entry.name
        if _OWNED.fullmatch(entry.name) or os.path.lexists(dst):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, dst)


def _default_dir_mode() -> int:
    """0o777 less the process umask (mkdtemp makes 0o700 directories)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o777 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o755


def _publish(tmp: Path, out: Path) -> None:
    """Make ``tmp`` appear at ``out``; an existing ``out`` stays whole until the switch, and
    the user's own files in it are carried over (hard links)."""
    if not out.exists():
        os.chmod(tmp, _default_dir_mode())
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    os.chmod(tmp, out.stat().st_mode & 0o7777)
    _carry_over(out, tmp)
    if _exchange(tmp, out):
        shutil.rmtree(tmp)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)


def save_pretrained(model: Model, out_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Write ``model`` as a Hugging Face directory; returns its path.

    With adapters attached: ``merge_lora=True`` writes W + (alpha/r) B A into the weights;
    ``merge_lora=False`` writes the base weights plus ``adapter_config.json`` and
    ``adapter_model.safetensors`` (PEFT's names for the LLaMA family, magnet's for GPT-2).
    The model in memory is not changed.
    """
    given = Path(out_dir)
    out = Path(os.path.realpath(given))  # a symlinked directory: write where it points
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{given} exists and is not a directory")
    cwd = Path(os.path.realpath(os.getcwd()))
    if out == cwd or out in cwd.parents:
        raise ValueError(
            f"cannot save into {given}: it is (or holds) the current working directory, and "
            "save_pretrained replaces the directory as a whole so that a crash never leaves "
            "half a model; save into a subdirectory"
        )
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    lora = model._c.lora_info()
    tensors = model.state_dict()
    adapter = model._c.lora_state_dict() if lora else {}
    if lora and merge_lora:
        scale = lora[1] / lora[0]
        for name in {n.rsplit(".", 1)[0] for n in adapter}:
            A, B = adapter[name + ".lora_A"], adapter[name + ".lora_B"]
            tensors[name + ".weight"] = tensors[name + ".weight"] + scale * (B @ A)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        cfg = config_to_hf(model.config)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "generation_config.json").write_text(
            json.dumps(generation_config_to_hf(model.config), indent=2))
        write_safetensors(tmp / "model.safetensors", tensors_to_hf(model.config, tensors),
                          {"format": "pt"})
        if model.tokenizer is not None:
            tok_json, tok_cfg = tokenizer_to_hf(model.tokenizer)
            (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2),
                                                       encoding="utf-8")
        if lora and not merge_lora:
            rank, alpha, mask = lora
            targets = [k for k, bit in _TARGET_BITS.items() if mask >> bit & 1]
            gpt2 = model.config.arch == "gpt2"
            (tmp / ADAPTER_CONFIG).write_text(json.dumps({
                "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
                "target_modules": targets if gpt2 else [_PEFT_MODULES[t].split(".")[1]
                                                        for t in targets],
                "magnet_targets": targets, "bias": "none", "task_type": "CAUSAL_LM"}, indent=2))
            names = {k: (k if gpt2 else _peft_name(k)) for k in adapter}
            write_safetensors(tmp / ADAPTER_WEIGHTS, {names[k]: v for k, v in adapter.items()})
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


def load_adapter(model: Model, directory: Path) -> None:
    """Attach the adapter saved beside a model by ``save_pretrained(merge_lora=False)``."""
    from magnet import _C

    try:
        cfg = json.loads((directory / ADAPTER_CONFIG).read_text())
        rank, alpha, targets = int(cfg["r"]), float(cfg["lora_alpha"]), cfg["magnet_targets"]
        mask = 0
        for t in targets:
            mask |= 1 << _TARGET_BITS[t]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{directory / ADAPTER_CONFIG}: not a magnet adapter config ({e})"
        ) from None
    state = _C.read_safetensors(os.fspath(directory / ADAPTER_WEIGHTS))
    model._c.attach_lora(rank, alpha, mask, 0)
    model._c.load_lora_state_dict({_magnet_name(k): np.ascontiguousarray(v)
                                   for k, v in state.items()})
