"""Weight quantization and static activation calibration in ONE running pass (SPEC §4, act 1–3).

The reference runs the calibration batches in file order through the model once, with every
static-activation linear (W8A8, W8A8S, W8A8_MIX) fake-quantized at once: at batch b a linear
observes its input (x.min(), x.max(), or a histogram), takes the range over batches 0..b (this
batch included), fake-quantizes its input with it and outputs ``F.linear(x_fq, (W_int − w_off)
· w_scale)``. The parameters saved are those after the last batch. Float layers stay float; the
KV cache is not quantized in this pass (its scales come from the smoothed float model).

A layer's inputs depend only on the layers before it, so running the model decoder layer by
decoder layer, each layer taking the batches in order with its running ranges, gives exactly
the same inputs as the whole-model pass. :func:`calibrate_layer` is that step for one layer:
(layer, its captured calls for every batch, the names of its linears to quantize) → the next
layer's calls; it quantizes the layer's weights first, so at most one layer's float weights
are held. The same pass measures each quantized linear's output SQNR against the float linear
on the very same input (the layer's own error during calibration, with the running ranges).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from quant import progress
from quant.arch import LM_HEAD, decoder_layers, final_norm, get_module, layer_index, layer_name, set_module
from quant.calib_data import Batch
from quant.config import QuantConfig
from quant.layerwise import Calls, advance, capture_first_layer_calls
from quant.observers import ActivationObserver, MinMaxObserver, ObserverFactory
from quant.qlinear import STATIC_ACT_TYPES, QuantLinear
from quant.quantizers import SqnrAccumulator, activation_params, fake_quantize_activation
from quant.schemes import quantize_linear

__all__ = [
    "ActivationRange",
    "CalibrationOutcome",
    "LayerWatcher",
    "MinMaxObserver",
    "calibrate_head",
    "calibrate_layer",
    "calibrate_model",
]

# A layer watcher observes decoder layer ``index`` while calibration runs it (attention
# quantization calibrates there): it installs its hooks on entering the context and sets its
# parameters on leaving it.
LayerWatcher = Callable[[int, nn.Module], contextlib.AbstractContextManager]


@dataclass
class ShardedObserver:
    """One observer per input shard of a row-parallel layer under tp_size (shard s: columns s·k/S …)."""

    shards: list[ActivationObserver]

    @property
    def name(self) -> str:
        return self.shards[0].name

    def update(self, x: torch.Tensor) -> None:
        for observer, chunk in zip(self.shards, x.chunk(len(self.shards), dim=-1)):
            observer.update(chunk)

    def ranges(self) -> list[tuple[float, float]]:
        return [observer.range() for observer in self.shards]


@dataclass
class ActivationRange:
    """The calibrated input range of one linear and the observer that chose it.

    Layers with per-shard parameters (tp_size) report one value per shard in each list.
    """

    observer: str
    xmin: float | list[float]
    xmax: float | list[float]
    scale: float | list[float]
    offset: float | list[float]


@dataclass
class CalibrationOutcome:
    """Per linear: the static input range (static types only), the output SQNR and the weight SQNR in dB."""

    ranges: dict[str, ActivationRange] = field(default_factory=dict)
    sqnr_db: dict[str, float] = field(default_factory=dict)
    weight_sqnr_db: dict[str, float] = field(default_factory=dict)

    def update(self, other: CalibrationOutcome) -> None:
        self.ranges.update(other.ranges)
        self.sqnr_db.update(other.sqnr_db)
        self.weight_sqnr_db.update(other.weight_sqnr_db)


def _observer_for(module: QuantLinear, name: str, make_observer: ObserverFactory) -> ActivationObserver:
    shards = getattr(module, "shards", 1)
    if shards == 1:
        return make_observer(name)
    return ShardedObserver([make_observer(name) for _ in range(shards)])


def _observer_ranges(observer: ActivationObserver | ShardedObserver) -> list[tuple[float, float]]:
    return observer.ranges() if isinstance(observer, ShardedObserver) else [observer.range()]


def _params(ranges: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Static asymmetric int8 scale and offset per shard, float32 (S,)."""
    params = [activation_params(xmin, xmax) for xmin, xmax in ranges]
    return torch.cat([p[0] for p in params]), torch.cat([p[1] for p in params])


SQNR_ROWS = 64  # output channels the SQNR measures, evenly strided: 64 float rows per linear, not a float matmul


def sqnr_rows(out_features: int) -> slice:
    """The output channels the SQNR report measures: every k-th, about ``SQNR_ROWS`` of them (all if fewer)."""
    return slice(None, None, max(1, out_features // SQNR_ROWS))


class CalibratingLinear(nn.Module):
    """Stands in for one quantized linear during the running pass.

    Static types: each call is one calibration batch; the observer sees the input, the range of
    batches 0..b gives this batch's scale/offset, and the output is
    ``F.linear(x_fq, (W_int − w_off)·w_scale)``. Other types run their own forward. Every call
    also accumulates the output SQNR against the float linear on the same input, on the output
    channels of :func:`sqnr_rows` (the float reference then costs ~64 rows, not a whole float matmul).
    """

    def __init__(self, quantized: QuantLinear, float_linear: nn.Module, observer: ActivationObserver | None) -> None:
        super().__init__()
        self.quantized = quantized
        self.float_linear = float_linear
        self.observer = observer
        self.sqnr = SqnrAccumulator()

    @property
    def weight(self) -> torch.Tensor:
        """The quantized module's weight (code that asks a projection for its device or shape)."""
        return self.quantized.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._static_forward(x) if self.observer is not None else self.quantized(x)
        rows = sqnr_rows(out.shape[-1])
        bias = getattr(self.float_linear, "bias", None)
        reference = F.linear(x, self.float_linear.weight[rows], None if bias is None else bias[rows])
        self.sqnr.update(reference, out[..., rows])
        return out

    def _static_forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.detach().float()
        self.observer.update(xf)
        scale, offset = _params(_observer_ranges(self.observer))
        scale, offset = scale.to(xf.device), offset.to(xf.device)
        shards = scale.numel()
        if shards == 1:
            x_fq = fake_quantize_activation(xf, scale, offset)
        else:
            xs = xf.unflatten(-1, (shards, -1))  # (..., S, k/S)
            x_fq = fake_quantize_activation(xs, scale.view(shards, 1), offset.view(shards, 1)).flatten(-2)
        bias = getattr(self.quantized, "bias", None)
        out = F.linear(x_fq, self.quantized.matmul_weight(), None if bias is None else bias.float())
        return out.to(x.dtype)

    def finish(self) -> ActivationRange | None:
        """Set the parameters after the last batch on the quantized module; its range for the report."""
        if self.observer is None:
            return None
        ranges = _observer_ranges(self.observer)
        scale, offset = _params(ranges)
        self.quantized.set_activation_params(scale, offset)

        def report(values: list[float]) -> float | list[float]:
            return values[0] if len(values) == 1 else values

        return ActivationRange(
            self.observer.name,
            report([r[0] for r in ranges]),
            report([r[1] for r in ranges]),
            report(scale.tolist()),
            report(offset.tolist()),
        )


@contextlib.contextmanager
def _calibrating(
    root: nn.Module, prefix: str, names: Sequence[str], cfg: QuantConfig, make_observer: ObserverFactory
) -> Iterator[tuple[dict[str, CalibratingLinear], dict[str, float]]]:
    """Quantize the weights of ``names`` (full names; ``prefix`` + the path inside ``root``) and stand a
    :class:`CalibratingLinear` in for each during the block; the quantized modules stay in place after it.

    Yields the stand-ins and each weight's SQNR in dB.
    """
    stand_ins: dict[str, CalibratingLinear] = {}
    weight_sqnr: dict[str, float] = {}
    with torch.no_grad():
        for name in names:
            path = name[len(prefix) :]
            linear = get_module(root, path)
            module, weight_sqnr[name] = quantize_linear(linear, cfg, name)
            observer = _observer_for(module, name, make_observer) if module.quant_type in STATIC_ACT_TYPES else None
            stand_ins[name] = CalibratingLinear(module, linear, observer)
            set_module(root, path, stand_ins[name])
    try:
        yield stand_ins, weight_sqnr
    finally:
        for name, stand_in in stand_ins.items():
            set_module(root, name[len(prefix) :], stand_in.quantized)


def _finish(stand_ins: Mapping[str, CalibratingLinear], weight_sqnr: dict[str, float]) -> CalibrationOutcome:
    outcome = CalibrationOutcome(weight_sqnr_db=weight_sqnr)
    for name, stand_in in stand_ins.items():
        rng = stand_in.finish()
        if rng is not None:
            outcome.ranges[name] = rng
        outcome.sqnr_db[name] = stand_in.sqnr.db
    return outcome


@contextlib.contextmanager
def _watching(watchers: Sequence[LayerWatcher], index: int, layer: nn.Module) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for watch in watchers:
            stack.enter_context(watch(index, layer))
        yield


def calibrate_layer(
    index: int,
    layer: nn.Module,
    calls: Calls,
    quantized: Sequence[str],
    cfg: QuantConfig,
    make_observer: ObserverFactory,
    watchers: Sequence[LayerWatcher] = (),
) -> tuple[Calls, CalibrationOutcome]:
    """Quantize decoder layer ``index`` and calibrate it in the running pass; return the next layer's calls.

    ``calls``: the layer's captured arguments for every calibration batch, in file order.
    ``quantized``: full names (``layer_name(index, ...)``) of its linears to quantize; the others
    stay float. The layer is modified in place (quantized modules replace the float linears).
    """
    prefix = layer_name(index) + "."
    with (
        torch.no_grad(),
        _calibrating(layer, prefix, quantized, cfg, make_observer) as (stand_ins, weight_sqnr),
        _watching(watchers, index, layer),
    ):
        next_calls = advance(calls, lambda call: call.run(layer), lambda c: progress.batches(c, total=len(calls)))
    return next_calls, _finish(stand_ins, weight_sqnr)


def calibrate_head(
    model: nn.Module, calls: Calls, cfg: QuantConfig, make_observer: ObserverFactory
) -> CalibrationOutcome:
    """Quantize and calibrate ``lm_head`` on the final norm's outputs of the last layer's calls."""
    norm = final_norm(model)
    with torch.no_grad(), _calibrating(model, "", [LM_HEAD], cfg, make_observer) as (stand_ins, weight_sqnr):
        head = stand_ins[LM_HEAD]
        for call in calls:
            head(norm(call.hidden))
    return _finish(stand_ins, weight_sqnr)


def calibrate_model(
    model: nn.Module,
    batches: Sequence[Batch],
    quantized: Sequence[str],
    cfg: QuantConfig,
    make_observer: ObserverFactory,
    watchers: Sequence[LayerWatcher] = (),
) -> CalibrationOutcome:
    """Quantize the linears ``quantized`` and calibrate their activations, one decoder layer at a time.

    ``make_observer(name)`` gives the observer of the static linear ``name`` (act_method).
    ``watchers`` see each decoder layer while the pass runs it (see ``LayerWatcher``).
    """
    wanted = set(quantized)
    outcome = CalibrationOutcome()
    if not wanted and not watchers:
        return outcome
    with torch.no_grad():
        calls = capture_first_layer_calls(model, batches)
        layers = decoder_layers(model)
        for i, layer in progress.stage("calibrate", enumerate(layers), total=len(layers)):
            names = [n for n in quantized if layer_index(n) == i]
            calls, layer_outcome = calibrate_layer(i, layer, calls, names, cfg, make_observer, watchers)
            outcome.update(layer_outcome)
        if LM_HEAD in wanted:
            outcome.update(calibrate_head(model, calls, cfg, make_observer))
    return outcome
