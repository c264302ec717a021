"""Regenerate docs/api.md from the public API's signatures and docstrings.

    python docs/build_api.py
"""

from __future__ import annotations

import inspect
from pathlib import Path

import magnet
from magnet.adapt import AdaptResult, Stage

ENTRIES = [
    ("magnet.Model.from_pretrained", magnet.Model.from_pretrained),
    ("magnet.Model.logits", magnet.Model.logits),
    ("magnet.Model.hidden_states", magnet.Model.hidden_states),
    ("magnet.Model.adapt", magnet.Model.adapt),
    ("magnet.Model.generate", magnet.Model.generate),
    ("magnet.Model.infill", magnet.Model.infill),
    ("magnet.Model.embed", magnet.Model.embed),
    ("magnet.Model.encode", magnet.Model.encode),
    ("magnet.Model.save_pretrained", magnet.Model.save_pretrained),
    ("magnet.Model.merge_lora", magnet.Model.merge_lora),
    ("magnet.Model.state_dict", magnet.Model.state_dict),
    ("magnet.Model.to", magnet.Model.to),
    ("magnet.Model.device", magnet.Model.device),
    ("magnet.Model.precision", magnet.Model.precision),
    ("magnet.cuda_is_available", magnet.cuda_is_available),
    ("magnet.cuda_device_count", magnet.cuda_device_count),
    ("magnet.AdaptResult", AdaptResult),
    ("magnet.InfillResult", magnet.InfillResult),
    ("magnet.TokenEmbeddings", magnet.TokenEmbeddings),
    ("magnet.adapt.Stage", Stage),
    ("magnet.Tokenizer", magnet.Tokenizer),
    ("magnet.ModelConfig", magnet.ModelConfig),
    ("magnet.set_num_threads", magnet.set_num_threads),
    ("magnet.get_num_threads", magnet.get_num_threads),
]


def main() -> None:
    out = ["# API reference", "",
           "Generated from the docstrings by `python docs/build_api.py`. "
           "`magnet.CONTEXT = 0`, `magnet.SPAN = 1`; `magnet.__version__` is the installed "
           "version.", ""]
    for name, obj in ENTRIES:
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        out += [f"## `{name}{sig}`", "", inspect.cleandoc(obj.__doc__ or "(no docstring)"), ""]
    Path(__file__).with_name("api.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
