"""Running the calibration data through a model one decoder layer at a time.

Several steps need the raw inputs of a layer's linears over many tokens (the AWQ and
Flex-smooth searches, the quantile score of the float fallback, activation calibration).
Holding them for every layer at once costs tokens × Σ in_features floats; walking the layers
in order holds only the hidden states of the batches plus one layer's inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quant import progress
from quant.arch import LM_HEAD, decoder_layers, final_norm
from quant.calib import Batch


class StopForward(Exception):
    """Raised by a hook to end a forward pass early once the wanted input is seen."""


@dataclass
class LayerCall:
    """One captured call of a decoder layer: its positional and keyword arguments."""

    args: tuple
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0]

    def with_hidden(self, hidden: torch.Tensor) -> LayerCall:
        return LayerCall((hidden, *self.args[1:]), self.kwargs)

    def run(self, layer: nn.Module) -> torch.Tensor:
        out = layer(*self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


def capture_first_layer_calls(model: nn.Module, batches: Sequence[Batch]) -> list[LayerCall]:
    """The arguments the first decoder layer receives for each batch (embeddings, masks, RoPE)."""
    calls: list[LayerCall] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not args:  # hidden states passed by keyword
            args, kwargs = (kwargs.pop("hidden_states"),), kwargs
        calls.append(LayerCall(args, dict(kwargs)))
        raise StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(StopForward):
                    model.model(**batch, use_cache=False)
    finally:
        handle.remove()
    return calls


def run_layer(
    layer: nn.Module, calls: Sequence[LayerCall], members: Mapping[str, nn.Module] | None = None
) -> tuple[dict[str, list[torch.Tensor]], list[LayerCall]]:
    """Run every call through ``layer``; return each member's input per call and the next layer's calls.

    Inputs are flattened to (tokens, in_features) float32. Members that receive the same
    tensor in a call (q/k/v, gate/up) get the same tensor object, not a copy.
    """
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in members or {}}
    flat_by_id: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(input) -> (input kept alive, flat)

    def make_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if id(x) not in flat_by_id:
                flat_by_id[id(x)] = (x, x.detach().reshape(-1, x.shape[-1]).float())  # (tokens, in)
            inputs[name].append(flat_by_id[id(x)][1])

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in (members or {}).items()]
    next_calls = []
    try:
        with torch.no_grad():
            for call in calls:
                flat_by_id.clear()
                next_calls.append(call.with_hidden(call.run(layer)))
    finally:
        for h in handles:
            h.remove()
    return inputs, next_calls


def iterate_layer_inputs(
    model: nn.Module,
    batches: Sequence[Batch],
    members_of: Callable[[int, nn.Module], Mapping[str, nn.Module]],
    head: nn.Module | None = None,
    stage_name: str = "observe",
) -> Iterator[tuple[int | None, dict[str, list[torch.Tensor]]]]:
    """Yield ``(layer index, {member name: per-batch inputs})`` for each decoder layer in order.

    ``members_of(i, layer)`` names the modules of layer i whose inputs are wanted. The next
    layer's inputs come from the same run, before the caller sees this layer's inputs, so the
    caller may change the layer in any way that keeps its float function (smoothing). With
    ``head`` given, a last item ``(None, {"lm_head": ...})`` carries the final norm's outputs.
    ``stage_name`` labels the progress bar.
    """
    calls = capture_first_layer_calls(model, batches)
    layers = decoder_layers(model)
    for i, layer in progress.stage(stage_name, enumerate(layers), total=len(layers)):
        inputs, calls = run_layer(layer, calls, members_of(i, layer))
        yield i, inputs
    if head is not None:
        norm = final_norm(model)
        with torch.no_grad():
            outs = [norm(call.hidden) for call in calls]
        yield None, {LM_HEAD: [o.reshape(-1, o.shape[-1]).float() for o in outs]}
