"""The MAGNET training step of ``magnet._C.Trainer`` written in plain PyTorch + transformers.

This is the peer of ``benchmarks/adapt.py``: the same step as the ``magnet`` preset, computed
with a transformers ``LlamaForCausalLM`` (or any decoder whose layers expose ``q_proj`` ..
``down_proj``):

- LoRA (A, B) on q, k, v, o, gate, up, down of every layer, base weights frozen, dropout on the
  LoRA input (``lora_dropout``), scale alpha / r; A and B can be copied from magnet's adapters so
  both engines start from the same values;
- dropout on the attention and MLP outputs before each residual add (``resid_dropout``), the
  places where magnet applies it;
- one forward over the combined batch (masked view rows, SSCL anchors, SSCL positives) under the
  unified attention rule (docs/method.md) given as an explicit additive 4D mask, positions
  counted from 0 inside each row;
- MNTP and MSG: mean cross-entropies of the LM head on the labelled positions only (the label
  stored at i-1 is the token at i), InfoNCE over last-token pooled SSCL vectors (cosine,
  temperature 0.05, in-batch negatives), weights 1/1/1;
- backward, global gradient-norm clipping at 1.0 and an AdamW step.

The batch arrives already masked (built with ``magnet._C.masked_view``), so both engines train on
the same tokens, roles and labels.

Devices: the step runs where the model's parameters are (CPU or CUDA); the LoRA parameters are
created on the device of the layer they wrap and stay float32 (master weights). With
``autocast_dtype=torch.bfloat16`` the forward runs under ``torch.autocast`` (bf16 matrix
products, float32 weights, optimizer state and losses) and the attention mask is built in that
dtype; on CUDA the AdamW step is the fused one. Within a step only the final read of the losses
and gradient norm waits for the device (labelled positions are found on the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

TARGETS = (("self_attn", "q_proj", "wq"), ("self_attn", "k_proj", "wk"),
           ("self_attn", "v_proj", "wv"), ("self_attn", "o_proj", "wo"),
           ("mlp", "gate_proj", "w_gate"), ("mlp", "up_proj", "w_up"),
           ("mlp", "down_proj", "w_down"))
# outputs that feed a residual add: magnet drops them out before adding (resid_dropout)
RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(dropout(x)))`` with the base frozen, then an optional dropout of
    the whole output (the residual dropout of attention / MLP outputs)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 out_dropout: float, a: np.ndarray | None = None,
                 b: np.ndarray | None = None) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.dropout = dropout
        self.out_dropout = out_dropout
        self.residual = out_dropout > 0
        if a is None:
            a = (torch.rand(rank, base.in_features) * 2 - 1) / base.in_features ** 0.5
        if b is None:
            b = torch.zeros(base.out_features, rank)
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.as_tensor(np.array(a, dtype=np.float32), device=device))
        self.lora_B = nn.Parameter(torch.as_tensor(np.array(b, dtype=np.float32), device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        xd = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        y = y + self.scale * F.linear(F.linear(xd, self.lora_A), self.lora_B)
        if self.out_dropout > 0:
            y = F.dropout(y, self.out_dropout, self.training)
        return y


def attach_lora(model: nn.Module, rank: int, alpha: float, lora_dropout: float,
                resid_dropout: float, state: dict[str, np.ndarray] | None = None
                ) -> list[nn.Parameter]:
    """Freeze ``model`` and wrap every projection in LoRA; ``state`` (magnet's
    ``lora_state_dict()`` names, ``layers.{i}.wq.lora_A`` ...) gives the initial A and B."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for i, layer in enumerate(model.model.layers):
        for block, name, mg_name in TARGETS:
            parent = getattr(layer, block)
            a = b = None
            if state is not None:
                a = state[f"layers.{i}.{mg_name}.lora_A"]
                b = state[f"layers.{i}.{mg_name}.lora_B"]
            wrapped = LoRALinear(getattr(parent, name), rank, alpha, lora_dropout,
                                 resid_dropout if name in RESIDUAL_OUTPUTS else 0.0, a, b)
            wrapped.residual = name in RESIDUAL_OUTPUTS
            setattr(parent, name, wrapped)
            params += [wrapped.lora_A, wrapped.lora_B]
    return params


def set_dropout(model: nn.Module, lora_dropout: float, resid_dropout: float) -> None:
    """Change the dropout rates of every LoRA wrapper (0, 0 for a deterministic check)."""
    for mod in model.modules():
        if isinstance(mod, LoRALinear):
            mod.dropout = lora_dropout
            mod.out_dropout = resid_dropout if mod.residual else 0.0


@dataclass
class Batch:
    """One combined micro-batch: rows [0, bm) masked view, then bs anchors, then bs positives.

    Packed layout (optional): ``positions`` [R, T] gives each token's position (restarting at 0
    in each segment) and ``sscl_pool`` = (rows, columns), each [2 * bs], the pooled (last) token
    of every anchor then every positive, so that several SSCL sequences can share a row as
    separate segments. Without them each SSCL sequence has its own row, from column 0.
    """

    tokens: np.ndarray      # [R, T] int64 (0 at padding)
    roles: np.ndarray       # [R, T] uint8, 0 CONTEXT, 1 SPAN
    segments: np.ndarray    # [R, T] int32, -1 at padding
    mntp: np.ndarray        # [R, T] int64, -100 where no MNTP label
    msg: np.ndarray         # [R, T] int64, -100 where no MSG label
    bm: int
    bs: int
    sscl_lengths: np.ndarray  # [bs] int64
    positions: np.ndarray | None = None
    sscl_pool: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def real_tokens(self) -> int:
        return int((self.segments >= 0).sum())


def unified_mask(roles: torch.Tensor, segments: torch.Tensor,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[R, 1, T, T] additive mask of the unified rule in ``dtype``, on the device of ``roles``;
    a query that sees nothing (padding) sees itself so softmax stays finite (its outputs carry
    no loss)."""
    t = roles.shape[1]
    device = roles.device
    span = roles.bool()
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] >= 0)
    idx = torch.arange(t, device=device)
    causal = idx[None, :, None] >= idx[None, None, :]
    visible = (~span[:, None, :]) | (span[:, :, None] & causal)
    allowed = same & visible
    allowed |= torch.eye(t, dtype=torch.bool, device=device)[None] & ~allowed.any(-1, keepdim=True)
    add = torch.zeros(allowed.shape, dtype=dtype, device=device)
    add.masked_fill_(~allowed, torch.finfo(dtype).min)
    return add[:, None]


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its row's segment (rows hold one segment then padding)."""
    real = (segments >= 0).long()
    return (torch.cumsum(real, dim=1) - 1).clamp_min(0) * real


class TorchMagnetStep:
    """The MAGNET step on a transformers causal LM with LoRA attached by :func:`attach_lora`.

    Runs on the device of the model's parameters; ``autocast_dtype`` (e.g. ``torch.bfloat16``)
    runs the forward under ``torch.autocast`` of that device type.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], lr: float = 2e-4,
                 weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 temperature: float = 0.05, clip_norm: float = 1.0,
                 weight_decay: float = 0.0, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.params = params
        self.weights = weights
        self.temperature = temperature
        self.clip_norm = clip_norm
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        fused = self.device.type == "cuda"
        self.opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=weight_decay, fused=fused or None)

    def _on_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x).to(self.device, non_blocking=True)

    def _forward(self, b: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total loss and its parts, as device tensors (no synchronisation)."""
        if self.autocast_dtype is None:
            return self._losses(b, torch.float32)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self._losses(b, self.autocast_dtype)

    def _losses(self, b: Batch, mask_dtype: torch.dtype
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = self._on_device(b.tokens)
        roles = self._on_device(b.roles)
        segs = self._on_device(b.segments)
        mask = unified_mask(roles, segs, mask_dtype)
        pos = self._on_device(b.positions) if b.positions is not None else segment_positions(segs)
        hidden = self.model.model(input_ids=tokens, attention_mask=mask,
                                  position_ids=pos).last_hidden_state
        R, T, D = hidden.shape
        flat = hidden.reshape(R * T, D)
        head = self.model.lm_head
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        parts: dict[str, torch.Tensor] = {}
        for name, labels, w in (("mntp", b.mntp, self.weights[0]), ("msg", b.msg, self.weights[2])):
            flat_labels = np.asarray(labels).reshape(-1)
            where = np.flatnonzero(flat_labels != -100)
            if w <= 0 or where.size == 0:
                continue
            idx = self._on_device(where)
            lab = self._on_device(flat_labels[where])
            loss = F.cross_entropy(head(flat.index_select(0, idx)).float(), lab)
            total = total + w * loss
            parts[name] = loss.detach()
        if b.bs >= 2 and self.weights[1] > 0:
            rows = torch.arange(b.bs, device=self.device)
            if b.sscl_pool is not None:
                at = hidden[self._on_device(b.sscl_pool[0]), self._on_device(b.sscl_pool[1])]
                a, p = at[:b.bs], at[b.bs:]
            else:
                last = self._on_device(np.asarray(b.sscl_lengths) - 1)
                a = hidden[b.bm + rows, last]
                p = hidden[b.bm + b.bs + rows, last]
            logits = F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).T / self.temperature
            loss = F.cross_entropy(logits.float(), rows)
            total = total + self.weights[1] * loss
            parts["sscl"] = loss.detach()
        return total, parts

    def losses(self, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass and the weighted total loss (with the three parts as floats)."""
        total, parts = self._forward(b)
        return total, {k: float(parts[k]) if k in parts else 0.0 for k in ("mntp", "sscl", "msg")}

    def step(self, b: Batch) -> dict[str, Any]:
        """One optimizer step: forward, backward, clipping, AdamW; returns losses and tokens."""
        self.model.train()
        total, parts = self._forward(b)
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        out = {k: float(parts[k]) if k in parts else 0.0 for k in ("mntp", "sscl", "msg")}
        return {**out, "grad_norm": float(norm), "tokens": b.real_tokens}
