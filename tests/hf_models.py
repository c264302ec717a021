"""Tiny random transformers checkpoints (test-only), and the reference attention masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

torch = __import__("pytest").importorskip("torch")
transformers = __import__("pytest").importorskip("transformers")

VOCAB = 96

ARCH_CONFIGS = {
    "llama": dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=False),
    "llama3": dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                   max_position_embeddings=128, rope_theta=500000.0,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=16),
                   tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    sliding_window=64, max_position_embeddings=128),
    "qwen2": dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128, tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                 n_positions=64, bos_token_id=0, eos_token_id=0),
    "gpt2-untied": dict(model_type="gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                        n_positions=64, bos_token_id=0, eos_token_id=0,
                        tie_word_embeddings=False),
}


def make_checkpoint(name: str, directory: Path, seed: int = 0):
    """Save a random tiny model of family ``name`` to ``directory``; return the torch model."""
    torch.manual_seed(seed)
    kwargs = dict(ARCH_CONFIGS[name])
    model_type = kwargs.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # larger weights than the default init, so errors would show
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    model.eval()
    model.save_pretrained(directory)
    return model


def rule_mask(roles: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """[B, T, T] bool: the unified rule of docs/method.md, written densely for reference."""
    r, s = roles.astype(bool), segments
    t = np.arange(roles.shape[1])
    same = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] >= 0)
    visible = (~r[:, None, :]) | (r[:, :, None] & (t[None, :, None] >= t[None, None, :]))
    return same & visible


def hf_logits(model, ids: np.ndarray, roles: np.ndarray, segments: np.ndarray,
              positions: np.ndarray | None = None) -> np.ndarray:
    """transformers logits with the rule as an explicit additive 4D mask."""
    mask = rule_mask(roles, segments)
    # rows with no visible key (padding) would be NaN; let them see themselves, they are ignored
    mask |= np.eye(ids.shape[1], dtype=bool)[None] & ~mask.any(-1, keepdims=True)
    add = np.where(mask, 0.0, torch.finfo(torch.float32).min).astype(np.float32)[:, None]
    if positions is None:
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(add),
                    position_ids=torch.as_tensor(np.array(positions), dtype=torch.long))
    return out.logits.float().numpy()
