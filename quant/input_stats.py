"""Observation passes: the statistics of every linear's input.

:func:`observe_layerwise` (one decoder layer at a time) is what the pipeline runs: on the float
model over the anti-outlier data (the anti-outlier methods' per-channel absmax / max / min and how
far each channel strays from its batch's distribution; the ``disable_threshold`` quantile scores)
and on the smoothed model over the first calibration batches (the per-batch extremes and centred
spread behind ``disable_level``'s range_param, SPEC §5). :func:`observe_linear_inputs` gives the
same statistics from one whole-model forward pass with hooks (no scores).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quant.arch import LM_HEAD, layer_index, relative_name
from quant.calib_data import Batch
from quant.layerwise import iterate_layer_inputs

QUANTILE_SAMPLE_START = 50  # disable_threshold samples each batch's sorted values [50::100] (SPEC §5)
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


def quantile_sample(x: torch.Tensor) -> torch.Tensor:
    """One batch's ``disable_threshold`` sample (SPEC §5): its input flattened and sorted, every 100th
    value from index 50 (all values when there are fewer than 100)."""
    ordered = x.detach().reshape(-1).float().sort().values
    if ordered.numel() < QUANTILE_SAMPLE_STEP:
        return ordered
    return ordered[QUANTILE_SAMPLE_START::QUANTILE_SAMPLE_STEP]


def quantile_score(batches: Sequence[torch.Tensor] | torch.Tensor) -> float:
    """The ``disable_threshold`` score of one linear's input over the batches (SPEC §5).

    Each batch's input is sampled alone (:func:`quantile_sample`); over the samples s of all
    batches together, ``score = 2·max|s|/254 / (q75(s) − q25(s) + 1e-10)``, the max and the
    quartiles (linear interpolation) over the sample, not the whole input.
    """
    inputs = [batches] if isinstance(batches, torch.Tensor) else list(batches)
    sample = torch.cat([quantile_sample(x).cpu() for x in inputs]).double().numpy()
    q25, q75 = np.quantile(sample, [0.25, 0.75])
    return float(2 * np.abs(sample).max() / 254 / (q75 - q25 + 1e-10))


def layer_input_stats(
    inputs: Mapping[str, Sequence[torch.Tensor]], order: Sequence[str], scored: Collection[str]
) -> dict[str, InputStats]:
    """:class:`InputStats` of one layer's linears from their per-batch inputs (``run_layer``'s).

    ``order``: the model's linear names (linears sharing one input share the first one's record);
    ``scored``: those that also get their quantile score.
    """
    stats: dict[str, InputStats] = {}
    by_tensor: dict[int, InputStats] = {}
    for name in sorted(inputs, key=list(order).index):
        first = inputs[name][0]
        if id(first) not in by_tensor:
            own = InputStats()
            for x in inputs[name]:
                own.update(x)
            by_tensor[id(first)] = own
        stats[name] = by_tensor[id(first)]
        if name in scored and stats[name].quantile_score is None:
            stats[name].quantile_score = quantile_score(inputs[name])
    return stats


def observe_layerwise(
    model: nn.Module,
    batches: Sequence[Batch],
    names: Sequence[str],
    scored: Collection[str] | None = None,
    stage_name: str = "observe",
) -> dict[str, InputStats]:
    """:class:`InputStats` of each named linear, one decoder layer at a time.

    ``scored``: the linears that also get their quantile score (default: all of ``names``).
    Memory: the hidden states of ``batches`` plus one layer's inputs. Linears that share one
    input (q/k/v, gate/up) share the result. ``stage_name`` labels the progress bar.
    """
    wanted = set(names)
    scored = wanted if scored is None else set(scored)
    stats: dict[str, InputStats] = {}

    def members_of(i: int, layer: nn.Module) -> dict[str, nn.Module]:
        return {n: layer.get_submodule(relative_name(n)) for n in wanted if layer_index(n) == i}

    head = model.get_submodule(LM_HEAD) if LM_HEAD in wanted else None
    for _i, inputs in iterate_layer_inputs(model, batches, members_of, head=head):
        stats.update(layer_input_stats(inputs, names, scored))
    return stats


class InputStatsCodec:
    """Observed statistics in a directory (one ``torch.save`` file), read back onto ``device``.

    Linears sharing one input (q/k/v) share one record on disk, and one object again when read.
    """

    FILE = "input_stats.pt"
    _TENSOR_FIELDS = ("amax", "cmax", "cmin", "outlier_sigmas")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device

    def write(self, value: dict[str, InputStats], directory: Path) -> None:
        records: list[dict[str, Any]] = []
        index: dict[str, int] = {}
        position: dict[int, int] = {}  # id(InputStats) -> its record
        for name, stat in value.items():
            if id(stat) not in position:
                position[id(stat)] = len(records)
                record = dataclasses.asdict(stat)
                for key in self._TENSOR_FIELDS:
                    if record[key] is not None:
                        record[key] = record[key].detach().to("cpu")
                records.append(record)
            index[name] = position[id(stat)]
        torch.save({"index": index, "records": records}, directory / self.FILE)

    def read(self, directory: Path) -> dict[str, InputStats]:
        payload = torch.load(directory / self.FILE, map_location="cpu", weights_only=True)
        shared: list[InputStats] = []
        for record in payload["records"]:
            for key in self._TENSOR_FIELDS:
                if record[key] is not None:
                    record[key] = record[key].to(self.device)
            shared.append(InputStats(**record))
        return {name: shared[i] for name, i in payload["index"].items()}
