"""The option and result classes of adapt and infill, in a module of their own: magnet.model
imports them for real (so ``typing.get_type_hints`` resolves ``Model.adapt`` and ``Model.infill``)
without loading magnet.adapt and magnet.infill, which pull in the checkpoint, format and
generation modules. Their public home stays magnet.adapt and magnet.infill (``__module__``), where
the documentation and pickles name them."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stage:
    """A share of the steps with its own loss weights (mntp, sscl, msg) and SSCL pooling."""

    fraction: float
    weights: tuple[float, float, float]
    pooling: str = "last"


# repr is written out: the generated one printed every history record (tens of KB for a few
# hundred steps), which a notebook cell ending in ``m.adapt(...)`` echoes in full.
@dataclass(repr=False)
class AdaptResult:
    """What ``Model.adapt`` returns: one dict per optimizer step in ``history`` (step, loss,
    mntp, sscl, msg, lr, grad_norm, tokens_per_s), evaluation losses in ``eval_history``."""

    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    checkpoint: str | None = None

    def __repr__(self) -> str:
        last: dict[str, Any] | None = None
        if self.history:
            # the losses of the last step; lr, grad_norm and throughput stay in history
            last = {k: (float(f"{v:.4g}") if isinstance(v, numbers.Real)
                        and not isinstance(v, numbers.Integral) else v)
                    for k, v in self.history[-1].items()
                    if k in ("step", "loss", "mntp", "sscl", "msg")}
        return (f"AdaptResult(steps={self.steps}, last={last}, "
                f"wall_time_s={self.wall_time_s:.1f}, checkpoint={self.checkpoint!r}, "
                f"history=<{len(self.history)} records>, "
                f"eval_history=<{len(self.eval_history)} records>)")


@dataclass
class InfillResult:
    """An infilled text.

    ``text``: the known text with every blank replaced by its span; ``spans``: the text of each
    span (list[str], one per blank); ``span_tokens``: the length in tokens used for each blank
    (list[int]); ``span_ids``: the token ids of each span; ``length_scores``: per blank, the
    score of each candidate length (empty for blanks whose length was given).
    """

    text: str
    spans: list[str]
    span_tokens: list[int]
    span_ids: list[list[int]]
    length_scores: list[dict[int, float]] = field(default_factory=list)


Stage.__module__ = AdaptResult.__module__ = "magnet.adapt"
InfillResult.__module__ = "magnet.infill"
