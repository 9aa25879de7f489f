"""The shared machinery of every anti-outlier method: pairs, contexts, applying scales."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.arch import SmoothPair, decoder_layers, norm_modules
from quant.observe import InputStats


@dataclass
class PairContext:
    """What a method may use to choose the scales of one smoothing pair in one layer."""

    layer_index: int
    pair: SmoothPair
    prev: nn.Module
    nexts: list[nn.Linear]
    stats: InputStats  # statistics of the input shared by ``nexts``
    params: dict[str, Any] = field(default_factory=dict)

    def weight_column_absmax(self) -> torch.Tensor:
        """``wmax_j = max over the group's linears of max_i |W_ij|``, shape (in_features,)."""
        cols = [lin.weight.detach().float().abs().amax(dim=0) for lin in self.nexts]
        return torch.stack(cols).amax(dim=0)


ScaleFn = Callable[[PairContext], torch.Tensor]


@dataclass(frozen=True)
class AntiOutlierMethod:
    """A registered method: its pairs, its scale rule, whether norms get a zero bias."""

    name: str
    description: str
    pairs: tuple[SmoothPair, ...]
    scale_fn: ScaleFn
    adds_norm_bias: bool = True
    default_params: dict[str, Any] = field(default_factory=dict)


def apply_pair_scales(ctx: PairContext, scales: torch.Tensor) -> None:
    """Divide ``prev``'s output channels by ``scales`` and multiply ``nexts``' input columns by them.

    The float function is unchanged: ``(x / s) · (W · diag(s))ᵀ = x · Wᵀ``.
    """
    with torch.no_grad():
        s = scales.to(ctx.prev.weight.device)
        if ctx.pair.kind == "norm":
            ctx.prev.weight.div_(s.to(ctx.prev.weight.dtype))
        else:
            ctx.prev.weight.div_(s.to(ctx.prev.weight.dtype).unsqueeze(1))  # rows of (out, in)
        bias = getattr(ctx.prev, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.div_(s.to(bias.dtype))
        for lin in ctx.nexts:
            lin.weight.mul_(s.to(lin.weight.dtype).unsqueeze(0))  # columns of (out, in)


def add_norm_bias(norm: nn.Module, bias: torch.Tensor | None = None) -> None:
    """Give an RMSNorm a ``bias`` parameter (zero unless given) that its output adds.

    LLaMA's RMSNorm has no bias; the reference saves one for every norm after anti-outlier.
    A forward hook adds it, so the module class and its other state are untouched.
    """
    if "bias" in norm._parameters:
        return
    value = torch.zeros_like(norm.weight) if bias is None else bias.to(norm.weight)
    norm.register_parameter("bias", nn.Parameter(value, requires_grad=False))
    norm.register_forward_hook(_add_bias_hook)


def _add_bias_hook(module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.bias


def add_zero_norm_biases(model: nn.Module) -> None:
    """Every RMSNorm, the final one included, gets a zero bias (SPEC §3)."""
    for norm in norm_modules(model).values():
        add_norm_bias(norm)


def pair_contexts(
    model: nn.Module, pairs: tuple[SmoothPair, ...], stats: dict[str, InputStats], params: dict[str, Any]
) -> list[PairContext]:
    """Resolve the pair table against the model's layers and attach each pair's input statistics."""
    contexts = []
    for i, layer in enumerate(decoder_layers(model)):
        for pair in pairs:
            first = f"model.layers.{i}.{pair.nexts[0]}"
            contexts.append(
                PairContext(
                    layer_index=i,
                    pair=pair,
                    prev=layer.get_submodule(pair.prev),
                    nexts=[layer.get_submodule(n) for n in pair.nexts],
                    stats=stats[first],
                    params=params,
                )
            )
    return contexts
