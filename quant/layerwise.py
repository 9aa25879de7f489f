"""Running the calibration data through a model one decoder layer at a time.

Several steps need the raw inputs of a layer's linears over many tokens (the AWQ and
Flex-smooth searches, the quantile score of the float fallback, activation calibration).
Holding them for every layer at once costs tokens × Σ in_features floats; walking the layers
in order holds only the hidden states of the batches plus one layer's inputs.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant import progress
from quant.arch import LM_HEAD, decoder_layers, final_norm
from quant.calib_data import Batch


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


class SpilledCalls:
    """Layer calls whose hidden states live on disk, one file per call; the other arguments
    (masks, RoPE tables: the same objects for every layer) stay in memory.

    Iterating loads one call's hidden states at a time. :func:`advance` over a ``SpilledCalls``
    writes the next layer's hidden states to disk too, and this object's files are removed.
    """

    def __init__(self, directory: Path, rests: list[tuple[tuple, dict[str, Any]]], paths: list[Path]) -> None:
        self.directory = directory
        self._rests = rests  # per call: (args after the hidden states, kwargs)
        self._paths = paths

    @classmethod
    def spill(cls, calls: Iterable[LayerCall], directory: Path) -> SpilledCalls:
        directory.mkdir(parents=True, exist_ok=True)
        rests, paths = [], []
        for call in calls:
            path = Path(tempfile.mkstemp(prefix="hidden-", suffix=".pt", dir=directory)[1])
            torch.save(call.hidden, path)
            rests.append((call.args[1:], call.kwargs))
            paths.append(path)
        return cls(directory, rests, paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[LayerCall]:
        for (rest, kwargs), path in zip(self._rests, self._paths, strict=True):
            yield LayerCall((torch.load(path, weights_only=True), *rest), kwargs)

    def __getitem__(self, index: slice) -> list[LayerCall]:
        return list(self)[index]

    def remove(self) -> None:
        """Delete this generation's files."""
        for path in self._paths:
            path.unlink(missing_ok=True)


Calls = Sequence[LayerCall] | SpilledCalls


def hidden_bytes(calls: Iterable[LayerCall]) -> int:
    """Bytes of the hidden states the calls carry (a layer boundary's activations)."""
    return sum(call.hidden.numel() * call.hidden.element_size() for call in calls)


def keep_or_spill(calls: list[LayerCall], budget_bytes: int | None, directory: Path | None) -> Calls:
    """``calls`` as they are, or on disk when their hidden states exceed ``budget_bytes``."""
    if budget_bytes is None or directory is None or hidden_bytes(calls) <= budget_bytes:
        return calls
    return SpilledCalls.spill(calls, directory)


def advance(
    calls: Calls,
    step: Callable[[LayerCall], torch.Tensor],
    wrap: Callable[[Iterable[LayerCall]], Iterable[LayerCall]] = iter,
) -> Calls:
    """The next layer's calls: each call's hidden states replaced by ``step(call)``, in order.

    Spilled calls stay spilled: each output goes to disk before the next call is loaded, so one
    call's hidden states are in memory at a time. ``wrap`` may add a progress bar.
    """
    if not isinstance(calls, SpilledCalls):
        return [call.with_hidden(step(call)) for call in wrap(calls)]
    outputs = (call.with_hidden(step(call)) for call in wrap(calls))
    spilled = SpilledCalls.spill(outputs, calls.directory)
    calls.remove()
    return spilled


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
    layer: nn.Module, calls: Calls, members: Mapping[str, nn.Module] | None = None
) -> tuple[dict[str, list[torch.Tensor]], Calls]:
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

    def step(call: LayerCall) -> torch.Tensor:
        flat_by_id.clear()
        return call.run(layer)

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in (members or {}).items()]
    try:
        with torch.no_grad():
            next_calls = advance(calls, step)
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
