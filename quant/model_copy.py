"""A model copy that shares every tensor with its source: modules are new, weights are not.

A sweep holds one float model. Each job (and each smoothing) works on a :func:`shared_copy`: it
replaces modules (a quantized linear for a float one, a new bias) in its own module tree and
leaves the source's untouched, while every layer it keeps float reads the source's tensors
without a copy. This relies on one rule that everything in ``quant/`` follows: a step that
changes a weight assigns a new tensor (``module.weight = nn.Parameter(w / s)``), never writes
into a tensor in place (tested: the source's state is bit-identical after every anti-outlier
method and scheme).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``'s modules (config, hooks and all) holding the same tensor objects."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


def replace_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Give ``module`` a new parameter (or buffer) ``name`` holding ``value``, leaving the old tensor as it was."""
    if name in module._buffers:
        module._buffers[name] = value
        return
    old = module._parameters.get(name)
    requires_grad = bool(old is not None and old.requires_grad and value.is_floating_point())
    module._parameters[name] = nn.Parameter(value, requires_grad=requires_grad)
