"""One observation pass: forward hooks record the statistics of every linear's input.

Everything later steps need from the float model comes from here: per-channel absmax / max /
min over all tokens (anti-outlier methods) and per-batch extremes and centred spread
(``range_param`` of the float-fallback rules, SPEC §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from quant.arch import LM_HEAD
from quant.calib import Batch


@dataclass
class InputStats:
    """Statistics of one linear's input over the observed batches."""

    amax: torch.Tensor | None = None  # (in_features,) max |x| over all tokens
    cmax: torch.Tensor | None = None  # (in_features,) max x
    cmin: torch.Tensor | None = None  # (in_features,) min x
    batch_max: list[float] = field(default_factory=list)  # max x of each batch
    batch_min: list[float] = field(default_factory=list)  # min x of each batch
    batch_centered_std: list[float] = field(default_factory=list)  # std(x_b - (cmax_b + cmin_b))
    tokens: int = 0

    def update(self, x: torch.Tensor) -> None:
        """Fold one batch's input ``x`` (..., in_features) into the statistics."""
        flat = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in_features)
        bmax = flat.amax(dim=0)
        bmin = flat.amin(dim=0)
        babs = torch.maximum(bmax.abs(), bmin.abs())
        if self.amax is None:
            self.amax, self.cmax, self.cmin = babs, bmax, bmin
        else:
            self.amax = torch.maximum(self.amax, babs)
            self.cmax = torch.maximum(self.cmax, bmax)
            self.cmin = torch.minimum(self.cmin, bmin)
        self.batch_max.append(float(bmax.max()))
        self.batch_min.append(float(bmin.min()))
        # The reference centres by the SUM of the channel extremes, not their midpoint (SPEC §5).
        self.batch_centered_std.append(float((flat - (bmax + bmin)).std()))
        self.tokens += flat.shape[0]

    @property
    def range_param(self) -> float:
        """``max(|t_max|, |t_min|) / std_max`` over the observed batches (SPEC §5)."""
        peak = max(abs(max(self.batch_max)), abs(min(self.batch_min)))
        return peak / max(max(self.batch_centered_std), 1e-12)


def forward_for_inputs(model: nn.Module, batch: Batch, with_head: bool) -> None:
    """Run a batch far enough to reach every linear; the vocabulary projection only if asked.

    ``lm_head`` over a large vocabulary costs as much as several decoder layers; when its
    input is not wanted the backbone alone runs.
    """
    hidden = model.model(**batch, use_cache=False).last_hidden_state
    if with_head:
        model.get_submodule(LM_HEAD)(hidden)


def observe_linear_inputs(model: nn.Module, batches: Sequence[Batch], names: Sequence[str]) -> dict[str, InputStats]:
    """Run ``batches`` once and return the input statistics of each named linear.

    Linears that share one input tensor (q/k/v, gate/up) are computed once and share the result.
    """
    stats: dict[str, InputStats] = {}
    # id of an input tensor of this forward -> (the tensor, its stats); holding the tensor keeps
    # its id from being reused by a later tensor of the same forward.
    seen: dict[int, tuple[torch.Tensor, InputStats]] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if id(x) in seen:
                stats[name] = seen[id(x)][1]
                return
            own = stats.setdefault(name, InputStats())
            own.update(x)
            seen[id(x)] = (x, own)

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                seen.clear()
                forward_for_inputs(model, batch, with_head=LM_HEAD in names)
    finally:
        for h in handles:
            h.remove()
    return stats
