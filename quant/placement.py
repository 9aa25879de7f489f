"""Several devices for evaluation: whole decoder layers per device, in forward order.

A model too large for one device is cut into consecutive runs of decoder layers. The modules
are taken in forward order (embeddings, layers 0…N−1, final norm, lm_head) and each goes to the
first device, from the current one on, whose budget it fits; so activations cross a device
boundary at most once per device. A tied lm_head stays with the embeddings it shares its weight
with. Sizes are the modules' tensors at their stored dtypes (int8 weights count one byte). The
plan is pure (tested with fake devices on ``meta`` models); :func:`dispatch` hands it to
accelerate's ``dispatch_model``, whose hooks move each module's inputs to its device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from quant.arch import layer_name
from quant.errors import QuantInputError

# Share of a device's memory a plan may fill by default; the rest is for activations and the KV cache.
DEFAULT_BUDGET_FRACTION = 0.85


@dataclass(frozen=True)
class Placement:
    """Where each top module goes (``device_map`` for accelerate) and the bytes put on each device."""

    device_map: dict[str, str]
    bytes_per_device: dict[str, int]


def _tensor_bytes(module: nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}  # tied tensors once
    return sum(t.numel() * t.element_size() for t in tensors.values())


def placement_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a plan places, in forward order: each child of the decoder stack (every decoder
    layer on its own), then the model's other children (lm_head)."""
    base = model.get_submodule("model")
    units: list[tuple[str, nn.Module]] = []
    for name, child in base.named_children():
        if name == "layers":
            units += [(layer_name(i), layer) for i, layer in enumerate(child)]
        else:
            units.append((f"model.{name}", child))
    units += [(name, child) for name, child in model.named_children() if name != "model"]
    return units


def _gb(size: int) -> str:
    return f"{size / 1e9:.3g} GB"


def _tied_to_embeddings(model: nn.Module) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embed is not None and head.weight is embed.weight


def plan_placement(model: nn.Module, budgets: Mapping[str, int]) -> Placement:
    """Put ``model``'s modules on the devices of ``budgets`` (device → bytes, in order of use).

    Raises :class:`QuantInputError` (parameter ``devices``) when the model does not fit.
    """
    devices = list(budgets)
    if not devices:
        raise QuantInputError("devices", "no device given; valid: one or more of cuda:0, cuda:1, …, cpu")
    used = dict.fromkeys(devices, 0)
    device_map: dict[str, str] = {}
    current = 0
    tied = _tied_to_embeddings(model)
    for name, module in placement_units(model):
        size = _tensor_bytes(module)
        if tied and module is model.get_output_embeddings():
            device_map[name] = device_map["model.embed_tokens"]  # its weight is already counted there
            continue
        while current < len(devices) and used[devices[current]] + size > budgets[devices[current]]:
            current += 1
        if current == len(devices):
            total = _tensor_bytes(model)
            raise QuantInputError(
                "devices",
                f"the model ({_gb(total)}) does not fit on {', '.join(devices)} "
                f"(budgets {', '.join(_gb(budgets[d]) for d in devices)}); {name} "
                f"({_gb(size)}) found no room: add a device or raise the budgets",
            )
        device_map[name] = devices[current]
        used[devices[current]] += size
    return Placement(device_map, used)


def device_budgets(devices: Sequence[str], fraction: float = DEFAULT_BUDGET_FRACTION) -> dict[str, int]:
    """``fraction`` of each device's total memory (CUDA: ``torch.cuda.mem_get_info``)."""
    budgets: dict[str, int] = {}
    for name in devices:
        device = torch.device(name)
        if device.type != "cuda":
            raise QuantInputError("devices", f"{name}: only CUDA devices get a default budget; give budgets")
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            raise QuantInputError("devices", f"{name} is not a visible CUDA device ({torch.cuda.device_count()} seen)")
        _free, total = torch.cuda.mem_get_info(device)
        budgets[name] = int(total * fraction)
    return budgets


def dispatch(model: nn.Module, placement: Placement) -> nn.Module:
    """Move each module to its planned device and hook it so its inputs follow (accelerate)."""
    from accelerate import dispatch_model

    return dispatch_model(model, device_map=placement.device_map)


def spread_over_devices(
    model: nn.Module, devices: Sequence[str], budgets: Mapping[str, int] | None = None
) -> Placement:
    """Plan over ``devices`` (budgets from ``budgets``, else :func:`device_budgets`) and dispatch ``model``."""
    if budgets is not None:
        missing = [d for d in devices if d not in budgets]
        if missing:
            raise QuantInputError("max_memory", f"no budget for {', '.join(missing)}; give one per device")
    plan_budgets = {d: budgets[d] for d in devices} if budgets is not None else device_budgets(devices)
    placement = plan_placement(model, plan_budgets)
    dispatch(model, placement)
    return placement
