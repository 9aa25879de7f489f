"""Static activation calibration, layer by layer on the already fake-quantized model (SPEC §4).

Decoder layers are calibrated in order. A layer's linears are observed on inputs produced by
the earlier layers with their weights AND activations quantized, and with the layer's own
weights already quantized; once its ranges are fixed, the layer runs again, fully quantized,
to produce the next layer's inputs. That is two layer passes per layer (about two forward
passes of the calibration data), instead of one per linear group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from quant.arch import LM_HEAD, decoder_layers, final_norm
from quant.calib import Batch
from quant.observe import forward_for_inputs
from quant.qlinear import STATIC_ACT_TYPES, QuantLinear
from quant.quantizers import activation_params


class ActivationObserver(Protocol):
    """Accumulates one linear's inputs over calibration batches and proposes a clipping range."""

    name: str

    def update(self, x: torch.Tensor) -> None: ...

    def range(self) -> tuple[float, float]: ...


@dataclass
class MinMaxObserver:
    """act_method 1 [exact]: the MEAN over batches of each batch's min and max."""

    name: str = "minmax"
    mins: list[float] = field(default_factory=list)
    maxs: list[float] = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        self.mins.append(float(x.min()))
        self.maxs.append(float(x.max()))

    def range(self) -> tuple[float, float]:
        return sum(self.mins) / len(self.mins), sum(self.maxs) / len(self.maxs)


ObserverFactory = Callable[[str], ActivationObserver]

# A layer watcher observes decoder layer ``index`` while calibration runs it, fully quantized, to
# produce the next layer's inputs (KV-cache and attention quantization calibrate there): it
# installs its hooks on entering the context and sets its parameters on leaving it.
LayerWatcher = Callable[[int, nn.Module], contextlib.AbstractContextManager]


@dataclass
class ActivationRange:
    """The calibrated input range of one linear and the observer that chose it."""

    observer: str
    xmin: float
    xmax: float
    scale: float
    offset: float


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early once the wanted input is seen."""


@dataclass
class _LayerCall:
    """One captured call of a decoder layer: its positional and keyword arguments."""

    args: tuple
    kwargs: dict[str, Any]

    def with_hidden(self, hidden: torch.Tensor) -> _LayerCall:
        return _LayerCall((hidden, *self.args[1:]), self.kwargs)

    def run(self, layer: nn.Module) -> torch.Tensor:
        out = layer(*self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


def _capture_first_layer_calls(model: nn.Module, batches: Sequence[Batch]) -> list[_LayerCall]:
    calls: list[_LayerCall] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not args:  # hidden states passed by keyword
            args, kwargs = (kwargs.pop("hidden_states"),), kwargs
        calls.append(_LayerCall(args, dict(kwargs)))
        raise _StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_StopForward):
                forward_for_inputs(model, batch, with_head=False)
    finally:
        handle.remove()
    return calls


def _observe_layer_inputs(
    layer: nn.Module, calls: Sequence[_LayerCall], members: dict[str, QuantLinear], make_observer: ObserverFactory
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
            observers.setdefault(name, make_observer(name)).update(x.detach().float())

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


def _fix_range(modules: Sequence[QuantLinear], observer: ActivationObserver) -> ActivationRange:
    xmin, xmax = observer.range()
    scale, offset = activation_params(xmin, xmax)
    for module in modules:
        module.set_activation_params(scale, offset)
    return ActivationRange(observer.name, xmin, xmax, float(scale), float(offset))


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
    watchers: Sequence[LayerWatcher] = (),
) -> dict[str, ActivationRange]:
    """Set the static input scale/offset of every W8A8 ``QuantLinear`` in ``model``.

    ``make_observer(name)`` gives the observer for the linear called ``name`` (act_method).
    ``watchers`` see each decoder layer's fully quantized run (see ``LayerWatcher``).
    Returns each calibrated linear's range.
    """
    static = {
        name: m for name, m in model.named_modules() if isinstance(m, QuantLinear) and m.quant_type in STATIC_ACT_TYPES
    }
    ranges: dict[str, ActivationRange] = {}
    if not static and not watchers:
        return ranges
    with torch.no_grad():
        calls = _capture_first_layer_calls(model, batches)
        for i, layer in enumerate(decoder_layers(model)):
            prefix = f"model.layers.{i}."
            members = {n[len(prefix) :]: m for n, m in static.items() if n.startswith(prefix)}
            if members:
                observers = _observe_layer_inputs(layer, calls, members, lambda n, p=prefix: make_observer(p + n))
                for name, observer in observers.items():
                    ranges[prefix + name] = _fix_range([members[name]], observer)
            with _watching(watchers, i, layer):
                calls = [call.with_hidden(call.run(layer)) for call in calls]
        if LM_HEAD in static:
            observer = make_observer(LM_HEAD)
            norm = final_norm(model)
            for call in calls:
                observer.update(norm(call.args[0]).float())
            ranges[LM_HEAD] = _fix_range([static[LM_HEAD]], observer)
    return ranges
