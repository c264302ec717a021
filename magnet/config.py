"""The architecture description shared by every loader and the C core."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ARCHITECTURES = ("llama", "gpt2")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelConfig:
    """What the C decoder needs to know, in one place for every checkpoint format.

    ``arch`` is ``"llama"`` for the LLaMA family (Llama 2/3, Mistral, Qwen2, SmolLM: RMSNorm,
    RoPE, SwiGLU, GQA) or ``"gpt2"`` (LayerNorm, learned positions, GELU).
    ``model_type`` keeps the source's own name (``"mistral"``, ``"qwen2"``, ...).
    """

    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 0
    sliding_window: int = 0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # every id that ends generation (config.json's list, or generation_config.json's); the
    # tokenizer's EOS (appended to sentence inputs) stays eos_token_id
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.eos_token_ids and self.eos_token_id is not None:
            self.eos_token_ids = (self.eos_token_id,)
        self.eos_token_ids = tuple(int(i) for i in self.eos_token_ids)
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.arch!r}; "
                f"magnet supports {', '.join(ARCHITECTURES)}"
            )
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"unsupported rope_scaling type {self.rope_type!r}; "
                f"magnet supports {', '.join(ROPE_TYPES)}"
            )

    def to_c(self) -> dict[str, Any]:
        """The dict the C core's Model constructor reads."""
        d = asdict(self)
        d["num_layers"] = self.num_layers
        return {k: v for k, v in d.items()
                if k not in ("source", "model_type", "eos_token_ids")}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
