"""Observation passes: the statistics of every linear's input.

:func:`observe_linear_inputs` (one forward pass, hooks, streaming) gives what the anti-outlier
methods need from the float model: per-channel absmax / max / min over all tokens and how far
each channel strays from its batch's distribution. :func:`observe_layerwise` (one layer at a
time) adds what needs a layer's raw inputs: the quantile score of ``disable_threshold``; with
the per-batch extremes and centred spread it feeds the float-fallback rules (SPEC §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from quant.arch import LM_HEAD, layer_index
from quant.calib import Batch
from quant.layerwise import iterate_layer_inputs

QUANTILE_SAMPLE_START = 50  # disable_threshold samples sorted values [50::100] (SPEC §5)
QUANTILE_SAMPLE_STEP = 100


@dataclass
class InputStats:
    """Statistics of one linear's input over the observed batches."""

    amax: torch.Tensor | None = None  # (in_features,) max |x| over all tokens
    cmax: torch.Tensor | None = None  # (in_features,) max x
    cmin: torch.Tensor | None = None  # (in_features,) min x
    batch_max: list[float] = field(default_factory=list)  # max x of each batch
    batch_min: list[float] = field(default_factory=list)  # min x of each batch
    batch_centered_std: list[float] = field(default_factory=list)  # std(x_b - (cmax_b + cmin_b))
    # (in_features,) max over batches of max_t |x_tj - mean_b| / std_b, mean/std over the whole batch
    outlier_sigmas: torch.Tensor | None = None
    quantile_score: float | None = None  # disable_threshold score, set by observe_layerwise
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
        mean, std = flat.mean(), flat.std().clamp(min=1e-12)
        sigmas = torch.maximum(bmax - mean, mean - bmin) / std
        self.outlier_sigmas = sigmas if self.outlier_sigmas is None else torch.maximum(self.outlier_sigmas, sigmas)
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


def quantile_score(x: torch.Tensor) -> float:
    """The ``disable_threshold`` score of one linear's input (SPEC §5).

    The input is flattened and sorted; every 100th value from index 50 is the sample (all
    values when there are fewer than 51); ``score = 2·amax/254 / (q75 − q25 + 1e-10)`` with
    amax = max|x| over the whole input and q25/q75 the sample's quartiles (linear interpolation).
    """
    ordered = x.detach().reshape(-1).float().sort().values
    sample = ordered[QUANTILE_SAMPLE_START::QUANTILE_SAMPLE_STEP]
    if sample.numel() == 0:
        sample = ordered
    q25, q75 = torch.quantile(sample.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    amax = float(ordered.abs().max())
    return float(2 * amax / 254 / (float(q75 - q25) + 1e-10))


def observe_layerwise(model: nn.Module, batches: Sequence[Batch], names: Sequence[str]) -> dict[str, InputStats]:
    """:class:`InputStats` of each named linear, with its quantile score, one decoder layer at a time.

    Memory: the hidden states of ``batches`` plus one layer's inputs. Linears that share one
    input (q/k/v, gate/up) share the result.
    """
    wanted = set(names)
    stats: dict[str, InputStats] = {}

    def members_of(i: int, layer: nn.Module) -> dict[str, nn.Module]:
        prefix = f"model.layers.{i}."
        return {n: layer.get_submodule(n[len(prefix) :]) for n in wanted if layer_index(n) == i}

    head = model.get_submodule(LM_HEAD) if LM_HEAD in wanted else None
    for _i, inputs in iterate_layer_inputs(model, batches, members_of, head=head):
        by_tensor: dict[int, InputStats] = {}
        for name in sorted(inputs, key=list(names).index):
            first = inputs[name][0]
            if id(first) not in by_tensor:
                own = InputStats()
                for x in inputs[name]:
                    own.update(x)
                own.quantile_score = quantile_score(torch.cat(inputs[name]))
                by_tensor[id(first)] = own
            stats[name] = by_tensor[id(first)]
    return stats
