"""Static activation calibration, layer by layer on the already fake-quantized model (SPEC §4),
and each quantized linear's output SQNR against its float counterpart on the same inputs.

Decoder layers are calibrated in order. A layer's linears are observed on inputs produced by
the earlier layers with their weights AND activations quantized, and with the layer's own
weights already quantized; once its ranges are fixed, the layer runs again, fully quantized,
to produce the next layer's inputs. That is two layer passes per layer (about two forward
passes of the calibration data), instead of one per linear group. The second pass also
measures each quantized linear's output SQNR in dB: its output against the float linear's
output on the very same input (the layer's own error, not the error accumulated upstream).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from quant.arch import LM_HEAD, decoder_layers, final_norm
from quant.calib import Batch
from quant.layerwise import LayerCall, capture_first_layer_calls
from quant.observers import ActivationObserver, MinMaxObserver, ObserverFactory
from quant.qlinear import STATIC_ACT_TYPES, QuantLinear
from quant.quantizers import SqnrAccumulator, activation_params
from quant.schemes.static import pdmix_phase

__all__ = ["ActivationRange", "CalibrationOutcome", "LayerWatcher", "MinMaxObserver", "calibrate_activations"]

# A layer watcher observes decoder layer ``index`` while calibration runs it, fully quantized, to
# produce the next layer's inputs (KV-cache and attention quantization calibrate there): it
# installs its hooks on entering the context and sets its parameters on leaving it.
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
    """Per linear: the static input range (W8A8 only) and the output SQNR in dB (when measured)."""

    ranges: dict[str, ActivationRange] = field(default_factory=dict)
    sqnr_db: dict[str, float] = field(default_factory=dict)


def _observe_layer_inputs(
    layer: nn.Module, calls: Sequence[LayerCall], members: dict[str, QuantLinear], make_observer: ObserverFactory
) -> dict[str, ActivationObserver]:
    """Run every call through ``layer`` and feed each member's input to its observer.

    Members that receive the same tensor in a call (q/k/v, gate/up) share one observer.
    """
    observers: dict[str, ActivationObserver] = {}
    seen: dict[int, tuple[torch.Tensor, str]] = {}  # id(input) -> (input kept alive, first member)

    def make_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if id(x) in seen:
                observers.setdefault(name, observers[seen[id(x)][1]])
                return
            seen[id(x)] = (x, name)
            observers.setdefault(name, _observer_for(members[name], name, make_observer)).update(x.detach().float())

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in members.items()]
    try:
        for call in calls:
            seen.clear()
            call.run(layer)
    finally:
        for h in handles:
            h.remove()
    return observers


def _advance_measuring(
    layer: nn.Module,
    calls: Sequence[LayerCall],
    members: Mapping[str, QuantLinear],
    float_linears: Mapping[str, nn.Module],
    sqnr: dict[str, SqnrAccumulator],
) -> list[LayerCall]:
    """Run the (now quantized) layer to get the next layer's calls, accumulating each member's SQNR."""

    def make_hook(name: str):
        reference = float_linears[name]

        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            sqnr.setdefault(name, SqnrAccumulator()).update(reference(args[0]), output)

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in members.items() if n in float_linears]
    try:
        return [call.with_hidden(call.run(layer)) for call in calls]
    finally:
        for h in handles:
            h.remove()


def _observer_for(module: QuantLinear, name: str, make_observer: ObserverFactory) -> ActivationObserver:
    shards = getattr(module, "shards", 1)
    if shards == 1:
        return make_observer(name)
    return ShardedObserver([make_observer(name) for _ in range(shards)])


def _fix_range(module: QuantLinear, observer: ActivationObserver | ShardedObserver) -> ActivationRange:
    ranges = observer.ranges() if isinstance(observer, ShardedObserver) else [observer.range()]
    params = [activation_params(xmin, xmax) for xmin, xmax in ranges]
    scale = torch.cat([p[0] for p in params])  # (S,)
    offset = torch.cat([p[1] for p in params])
    module.set_activation_params(scale, offset)

    def report(values: list[float]) -> float | list[float]:
        return values[0] if len(values) == 1 else values

    return ActivationRange(
        observer.name,
        report([r[0] for r in ranges]),
        report([r[1] for r in ranges]),
        report(scale.tolist()),
        report(offset.tolist()),
    )


@contextlib.contextmanager
def _watching(watchers: Sequence[LayerWatcher], index: int, layer: nn.Module) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for watch in watchers:
            stack.enter_context(watch(index, layer))
        yield


def calibrate_activations(
    model: nn.Module,
    batches: Sequence[Batch],
    make_observer: ObserverFactory,
    float_linears: dict[str, nn.Module] | None = None,
    watchers: Sequence[LayerWatcher] = (),
) -> CalibrationOutcome:
    """Set the static input scale/offset of every static-activation ``QuantLinear`` in ``model``.

    ``make_observer(name)`` gives the observer for the linear called ``name`` (act_method).
    With ``float_linears`` (name -> the float linear a QuantLinear replaced), every quantized
    linear's output SQNR on the calibration data is measured too (W8A16 layers included); each
    entry is removed from ``float_linears`` once its decoder layer is measured, which frees the
    float copy before the next layer's quantized caches are built.
    ``watchers`` see each decoder layer's fully quantized run (see ``LayerWatcher``).
    W8A8_MIX layers run their static (decode) path meanwhile, as the reference calibrates
    them like W8A8.
    """
    float_linears = float_linears or {}
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    static = {name: m for name, m in quantized.items() if m.quant_type in STATIC_ACT_TYPES}
    outcome = CalibrationOutcome()
    if not static and not watchers and not (float_linears.keys() & quantized.keys()):
        return outcome
    sqnr: dict[str, SqnrAccumulator] = {}
    with torch.no_grad(), pdmix_phase(model, "decode"):
        calls = capture_first_layer_calls(model, batches)
        for i, layer in enumerate(decoder_layers(model)):
            prefix = f"model.layers.{i}."
            members = {n: m for n, m in static.items() if n.startswith(prefix)}
            if members:
                observers = _observe_layer_inputs(layer, calls, members, make_observer)
                for name, observer in observers.items():
                    outcome.ranges[name] = _fix_range(members[name], observer)
            in_layer = {n: m for n, m in quantized.items() if n.startswith(prefix)}
            with _watching(watchers, i, layer):
                calls = _advance_measuring(layer, calls, in_layer, float_linears, sqnr)
            for name in in_layer:  # measured: free the float copy as calibration moves on
                float_linears.pop(name, None)
        if LM_HEAD in quantized:
            head = quantized[LM_HEAD]
            head_inputs = [final_norm(model)(call.hidden) for call in calls]
            if LM_HEAD in static:
                observer = _observer_for(head, LM_HEAD, make_observer)
                for x in head_inputs:
                    observer.update(x.float())
                outcome.ranges[LM_HEAD] = _fix_range(head, observer)
            if LM_HEAD in float_linears:
                acc = sqnr.setdefault(LM_HEAD, SqnrAccumulator())
                for x in head_inputs:
                    acc.update(float_linears[LM_HEAD](x), head(x))
    outcome.sqnr_db = {name: acc.db for name, acc in sqnr.items()}
    return outcome
