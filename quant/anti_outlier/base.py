"""The shared machinery of every anti-outlier method: pairs, contexts, applying a transform.

A method looks at one smoothing pair at a time (a :class:`PairContext`) and returns a
:class:`PairTransform`: per-channel scales ``s`` and optionally a shift ``z``. Applying it
rewrites ``prev`` to output ``(y − z) / s`` and the next linears to take that and still
compute the same function, so the float model is unchanged (a change of basis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.arch import SmoothPair, decoder_layers, kv_head_groups, layer_name, norm_modules
from quant.errors import QuantInputError
from quant.input_stats import InputStats
from quant.model_copy import replace_tensor

MIN_SCALE = 1e-5


@dataclass
class PairContext:
    """What a method may use to choose the transform of one smoothing pair in one layer.

    ``stats`` are the float model's statistics of the input shared by ``nexts``; ``inputs``
    are that input's raw values (tokens, in_features) for methods that search (m3, m6).
    Scales are per input channel of ``nexts``; for a pair whose ``prev`` feeds several query
    heads per output channel (GQA v→o) they are averaged back, see :meth:`to_prev_channels`.
    """

    layer_index: int
    pair: SmoothPair
    prev: nn.Module
    nexts: list[nn.Linear]
    stats: InputStats | None = None
    params: dict[str, Any] = field(default_factory=dict)
    inputs: torch.Tensor | None = None
    kv_groups: int = 1  # query heads per KV head (1 for MHA)
    head_dim: int = 0
    weight_bits: int = 8  # the recipe's weight quantizer, for methods that measure its error
    weight_symmetric: bool = True

    @property
    def name(self) -> str:
        return layer_name(self.layer_index, self.pair.prev)

    @property
    def first_next_name(self) -> str:
        return layer_name(self.layer_index, self.pair.nexts[0])

    def weight_column_absmax(self) -> torch.Tensor:
        """``wmax_j = max over the group's linears of max_i |W_ij|``, shape (in_features,)."""
        return self.stacked_weight().abs().amax(dim=0)

    def stacked_weight(self) -> torch.Tensor:
        """The next linears' weights stacked along the output dimension: (Σ out, in) float32."""
        return torch.cat([lin.weight.detach().float() for lin in self.nexts], dim=0)

    def to_prev_channels(self, scales: torch.Tensor) -> torch.Tensor:
        """Per-next-input-channel scales → per-prev-output-channel scales.

        For v→o under GQA, o_proj input channel ``(h, d)`` reads v_proj output ``(h // groups, d)``:
        the scales of the query heads sharing one KV head are averaged. Identity otherwise.
        """
        if not self.pair.shares_kv_heads or self.kv_groups == 1:
            return scales
        n_kv = scales.numel() // (self.kv_groups * self.head_dim)
        return scales.view(n_kv, self.kv_groups, self.head_dim).mean(dim=1).reshape(-1)  # (n_kv * head_dim,)

    def to_next_channels(self, scales: torch.Tensor) -> torch.Tensor:
        """Per-prev-output-channel scales → per-next-input-channel scales (repeated per query head)."""
        if not self.pair.shares_kv_heads or self.kv_groups == 1:
            return scales
        per_kv = scales.view(-1, 1, self.head_dim)  # (n_kv, 1, head_dim)
        return per_kv.expand(-1, self.kv_groups, -1).reshape(-1)  # (n_heads * head_dim,)


@dataclass
class PairTransform:
    """What a method chose for one pair: scales, an optional shift, and what its search found."""

    scales: torch.Tensor  # (in_features of nexts,)
    shift: torch.Tensor | None = None  # (in_features,) norm pairs only
    detail: dict[str, float] = field(default_factory=dict)


TransformFn = Callable[[PairContext], PairTransform]
INPUTS_NONE, INPUTS_FIRST_BATCH, INPUTS_ALL = "none", "first_batch", "all"


@dataclass(frozen=True)
class ParamRule:
    """The valid values of one method setting: a number in [low, high], an integer if asked."""

    low: float
    high: float
    integer: bool = False

    def check(self, method: str, key: str, value: Any) -> None:
        ok_type = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not self.low <= value <= self.high:
            kind = "an integer" if self.integer else "a number"
            raise QuantInputError(
                "anti_params", f"{key} of {method} must be {kind} in [{self.low}, {self.high}], got {value!r}"
            )


@dataclass(frozen=True)
class AntiOutlierMethod:
    """A registered method: its pairs, its transform rule, its settings and what data it needs.

    ``inputs`` says whether the method needs the raw inputs of each pair (``first_batch`` or
    ``all`` tokens); ``needs_stats`` whether it needs the one-pass statistics.
    """

    name: str
    description: str
    pairs: tuple[SmoothPair, ...]
    transform_fn: TransformFn
    adds_norm_bias: bool = True
    default_params: dict[str, Any] = field(default_factory=dict)
    param_rules: dict[str, ParamRule] = field(default_factory=dict)
    inputs: str = INPUTS_NONE
    needs_stats: bool = True

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by ``params``; unknown keys and out-of-range values are rejected."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.default_params))
        if unknown:
            valid = ", ".join(self.default_params) or "none"
            raise QuantInputError("anti_params", f"{unknown[0]!r} is not a setting of {self.name}; valid: {valid}")
        for key, value in params.items():
            if key in self.param_rules:
                self.param_rules[key].check(self.name, key, value)
        return {**self.default_params, **params}


def migration_scales(amax: torch.Tensor, wmax: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``s = clamp(amax^α / wmax^β, min=1e-5)``: SmoothQuant's scale (β = 1 − α) and its relatives."""
    wmax = wmax.to(amax.device).clamp(min=MIN_SCALE)
    return (amax.pow(alpha) / wmax.pow(beta)).clamp(min=MIN_SCALE)


def apply_pair_transform(ctx: PairContext, transform: PairTransform) -> torch.Tensor:
    """Rewrite ``prev`` and ``nexts`` so the float function is unchanged; return the prev-side scales.

    ``prev`` output y becomes ``(y − z) / s`` (norm: weight / s, bias (b − z) / s; linear: rows
    / s); each next linear's columns are multiplied by s and its bias gains ``W · z``:
    ``W·diag(s)·(y − z)/s + W·z = W·y``.
    """
    s_prev = ctx.to_prev_channels(transform.scales.float())
    s_next = ctx.to_next_channels(s_prev)
    shift = transform.shift
    if shift is not None and ctx.pair.kind != "norm":
        raise ValueError("a shift is only defined for norm → linear pairs")
    # New tensors, never in-place writes: the model may share its tensors with the sweep's float model.
    with torch.no_grad():
        s = s_prev.to(ctx.prev.weight.device)
        if shift is not None:
            add_norm_bias(ctx.prev)
            replace_tensor(ctx.prev, "bias", ctx.prev.bias - shift.to(ctx.prev.bias))
            for lin in ctx.nexts:
                _add_to_linear_bias(lin, lin.weight.detach().double() @ shift.double().to(lin.weight.device))
        if ctx.pair.kind == "norm":
            replace_tensor(ctx.prev, "weight", ctx.prev.weight / s.to(ctx.prev.weight.dtype))
        else:
            replace_tensor(ctx.prev, "weight", ctx.prev.weight / s.to(ctx.prev.weight.dtype).unsqueeze(1))  # rows
        bias = getattr(ctx.prev, "bias", None)
        if isinstance(bias, torch.Tensor):
            replace_tensor(ctx.prev, "bias", bias / s.to(bias.dtype))
        for lin in ctx.nexts:
            replace_tensor(lin, "weight", lin.weight * s_next.to(lin.weight).unsqueeze(0))  # columns of (out, in)
    return s_prev


def _add_to_linear_bias(linear: nn.Linear, delta: torch.Tensor) -> None:
    """``linear.bias += delta``, creating the bias (LLaMA linears have none) when missing."""
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros_like(linear.weight[:, 0]), requires_grad=False)
    replace_tensor(linear, "bias", linear.bias + delta.to(linear.bias))


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
    model: nn.Module,
    pairs: tuple[SmoothPair, ...],
    stats: Mapping[str, InputStats] | None,
    params: dict[str, Any],
    weight_bits: int = 8,
    weight_symmetric: bool = True,
) -> list[PairContext]:
    """Resolve the pair table against the model's layers and attach each pair's input statistics."""
    kv_groups, head_dim = kv_head_groups(model)
    return [
        ctx
        for i, layer in enumerate(decoder_layers(model))
        for ctx in layer_pair_contexts(
            i, layer, pairs, stats, params, kv_groups, head_dim, weight_bits, weight_symmetric
        )
    ]


def layer_pair_contexts(
    index: int,
    layer: nn.Module,
    pairs: tuple[SmoothPair, ...],
    stats: Mapping[str, InputStats] | None,
    params: dict[str, Any],
    kv_groups: int,
    head_dim: int,
    weight_bits: int = 8,
    weight_symmetric: bool = True,
) -> list[PairContext]:
    """The pair contexts of decoder layer ``index`` (see :func:`pair_contexts`)."""
    contexts = []
    for pair in pairs:
        ctx = PairContext(
            layer_index=index,
            pair=pair,
            prev=layer.get_submodule(pair.prev),
            nexts=[layer.get_submodule(n) for n in pair.nexts],
            params=params,
            kv_groups=kv_groups,
            head_dim=head_dim,
            weight_bits=weight_bits,
            weight_symmetric=weight_symmetric,
        )
        if stats is not None:
            ctx.stats = stats[ctx.first_next_name]
        contexts.append(ctx)
    return contexts
