"""Checkpoint formats. Each module turns one format into a `Loaded`: a ModelConfig, float32
tensors under magnet's parameter names (see csrc/model/params.c), and a Tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magnet.config import ModelConfig
from magnet.tokenizer import Tokenizer


@dataclass
class Loaded:
    config: ModelConfig
    tensors: dict[str, np.ndarray]
    tokenizer: Tokenizer | None
