"""Attention quantization (``use_fa_quant``, ``fa_amp``, type FAQuant): per-head int8 Q, K, V after RoPE.

SPEC §4: symmetric int8 per attention head for the query, key and value states that enter the
attention kernel (after RoPE and after the KV-cache update, before GQA's head repetition); the
range of a head covers 0.9999 of its |Q| and |K| values and all of its |V| values. Saved per
attention layer as ``<attn>.fa_{q,k,v}.scale`` (float32, [heads, 1]) and ``.offset`` (int8 zeros,
[heads, 1]); K and V have the model's KV heads, Q its query heads.

No patched modeling file: the quantizers are submodules of each ``self_attn`` (``fa_q``, ``fa_k``,
``fa_v``; their buffers are the saved tensors) and the model's attention implementation is
switched to a function registered in transformers' ``AttentionInterface`` that fake-quantizes
Q/K/V with them and then calls the model's original implementation (sdpa or eager). An attention
layer without quantizers (kept in float by ``fa_amp``) goes straight to the original one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from quant.arch import decoder_layers, layer_name
from quant.quantizers import fake_quantize_activation, symmetric_params

log = logging.getLogger(__name__)

FA_TYPE = "FAQuant"
FA_BITS = 8
STATES = ("q", "k", "v")
# Share of each head's |values| the int8 range must cover (SPEC §4).
COVERAGE = {"q": 0.9999, "k": 0.9999, "v": 1.0}
IMPLEMENTATION_PREFIX = "fa_int8_"
_RECORDER_ATTR = "_fa_recorder"


def quantizer_name(state: str) -> str:
    """Submodule name of a state's quantizer in ``self_attn``: ``fa_q``, ``fa_k``, ``fa_v``."""
    return f"fa_{state}"


class HeadQuantizer(nn.Module):
    """Per-head fake quantization of attention states (batch, heads, seq, head_dim).

    Buffers (saved): ``scale`` float32 (heads, 1), ``offset`` int8 (heads, 1), zero (symmetric).
    ``x_int = clamp(round(x / scale + offset), -128, 127)``, output ``(x_int - offset) · scale``.
    """

    def __init__(self, num_heads: int, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        value = torch.ones(num_heads, 1) if scale is None else scale.detach().float().reshape(num_heads, 1)
        self.register_buffer("scale", value)
        self.register_buffer("offset", torch.zeros(num_heads, 1, dtype=torch.int8))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        # (heads, 1) -> (1, heads, 1, 1) to broadcast over (batch, heads, seq, head_dim)
        return fake_quantize_activation(states, self.scale.view(1, -1, 1, 1), self.offset.view(1, -1, 1, 1))


def coverage_amax(states: torch.Tensor, coverage: float) -> torch.Tensor:
    """Per head, the smallest r such that at least ``coverage`` of the head's |values| are <= r.

    ``states``: (batch, heads, seq, head_dim); returns (heads,). coverage 1.0 is the plain max.
    """
    per_head = states.detach().float().abs().transpose(0, 1).reshape(states.shape[1], -1)  # (heads, values)
    n = per_head.shape[1]
    rank = min(n, max(1, math.ceil(coverage * n - 1e-6)))  # tolerance: 0.9999 * n is inexact in float
    if rank == n:
        return per_head.amax(dim=1)
    return per_head.kthvalue(rank, dim=1).values


def head_ranges(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One calibration batch's range of every head: the ``COVERAGE`` quantile of |Q|, |K|, |V| (SPEC §4)."""
    return {state: coverage_amax(x, COVERAGE[state]) for state, x in zip(STATES, (query, key, value))}


def install_head_quantizers(attention: nn.Module, scales: dict[str, torch.Tensor] | None = None) -> None:
    """Give one ``self_attn`` its ``fa_q`` / ``fa_k`` / ``fa_v`` quantizers (scale 1 until given)."""
    config = attention.config
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads, "v": config.num_key_value_heads}
    device = attention.q_proj.weight.device
    for state in STATES:
        scale = None if scales is None else scales[state]
        attention.add_module(quantizer_name(state), HeadQuantizer(heads[state], scale).to(device))


def remove_head_quantizers(attention: nn.Module) -> None:
    """Keep one attention layer in float: drop its quantizers (and so its saved tensors)."""
    for state in STATES:
        delattr(attention, quantizer_name(state))


def has_head_quantizers(attention: nn.Module) -> bool:
    return isinstance(getattr(attention, quantizer_name("q"), None), HeadQuantizer)


# -- the registered attention function ------------------------------------------------------


def _original_attention(implementation: str) -> Callable[..., tuple[torch.Tensor, Any]]:
    if implementation == "eager":  # eager is the modeling file's own function, not in the registry
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


def quantized_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    original: str,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Fake-quantize Q/K/V per head with ``module``'s quantizers, then run the ``original``
    implementation. During calibration a recorder on the module observes the float states instead."""
    attend = _original_attention(original)
    recorder = getattr(module, _RECORDER_ATTR, None)
    if recorder is not None:
        output = attend(module, query, key, value, attention_mask, **kwargs)
        recorder.record(attend, module, (query, key, value), attention_mask, kwargs, output[0])
        return output
    if has_head_quantizers(module):
        query, key, value = (getattr(module, quantizer_name(s))(x) for s, x in zip(STATES, (query, key, value)))
    return attend(module, query, key, value, attention_mask, **kwargs)


def use_quantized_attention(model: nn.Module) -> str:
    """Switch ``model`` to the quantizing attention function (registered once per original
    implementation, with that implementation's mask builder). Returns the implementation name."""
    current = model.config._attn_implementation or "sdpa"
    if current.startswith(IMPLEMENTATION_PREFIX):
        return current
    name = IMPLEMENTATION_PREFIX + current
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, functools.partial(quantized_attention, original=current))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    model.set_attn_implementation(name)
    return name


# -- calibration ------------------------------------------------------------------------------


@dataclass
class _LayerRecorder:
    """One attention layer's calibration: per-head ranges, and (for fa_amp) its calls for scoring."""

    keep_calls: bool
    ranges: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: list[tuple[Callable, tuple[torch.Tensor, ...], Any, dict[str, Any], torch.Tensor]] = field(
        default_factory=list
    )

    def record(
        self,
        attend: Callable,
        module: nn.Module,
        states: tuple[torch.Tensor, ...],
        attention_mask: Any,
        kwargs: dict[str, Any],
        output: torch.Tensor,
    ) -> None:
        # The reference takes the range of each calibration sample, then the extremes over samples.
        for state, batch_range in head_ranges(*states).items():
            seen = self.ranges.get(state)
            self.ranges[state] = batch_range if seen is None else torch.maximum(seen, batch_range)
        if self.keep_calls:
            self.calls.append((attend, tuple(s.detach() for s in states), attention_mask, dict(kwargs), output))

    def output_error(self, module: nn.Module) -> float:
        """``Σ‖attn(Q̂, K̂, V̂) − attn(Q, K, V)‖² / Σ‖attn(Q, K, V)‖²`` over the recorded calls."""
        noise = signal = 0.0
        for attend, states, mask, kwargs, reference in self.calls:
            quantized = [getattr(module, quantizer_name(s))(x) for s, x in zip(STATES, states)]
            output = attend(module, *quantized, mask, **kwargs)[0].float()
            noise += float((output - reference.float()).pow(2).sum())
            signal += float(reference.float().pow(2).sum())
        return noise / max(signal, 1e-30)


@dataclass
class AttentionQuantCalibrator:
    """Calibrates the per-head Q/K/V scales layer by layer; :meth:`watch` is a calibration ``LayerWatcher``.

    While calibration runs decoder layer i fully quantized, the attention function records the
    float Q/K/V entering the kernel (the run's output is not changed: like the reference, the
    attention quantizers only observe during calibration). When the layer is done its quantizers
    are installed. With ``fa_amp > 0`` each layer is also scored by the relative error its
    quantized Q/K/V cause in the attention output on the calibration batches, and
    :meth:`keep_float` then keeps the ``fa_amp`` highest-scoring layers in float.
    """

    fa_amp: int = 0
    output_errors: dict[str, float] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def watch(self, index: int, layer: nn.Module) -> Iterator[None]:
        attention = layer.self_attn
        recorder = _LayerRecorder(keep_calls=self.fa_amp > 0)
        setattr(attention, _RECORDER_ATTR, recorder)
        try:
            yield
        finally:
            delattr(attention, _RECORDER_ATTR)
        install_head_quantizers(attention, {s: symmetric_params(r, FA_BITS)[0] for s, r in recorder.ranges.items()})
        if recorder.keep_calls:
            self.output_errors[layer_name(index, "self_attn")] = recorder.output_error(attention)

    def keep_float(self, model: nn.Module) -> list[str]:
        """Apply ``fa_amp``: the layers with the largest output error lose their quantizers.

        ``fa_amp`` is capped at the number of layers. Returns the attention layers kept in float.
        """
        layers = decoder_layers(model)
        count = min(self.fa_amp, len(layers))
        if self.fa_amp > len(layers):
            log.warning("fa_amp %d exceeds the %d attention layers; keeping all in float", self.fa_amp, len(layers))
        in_order = list(self.output_errors)
        ranked = sorted(in_order, key=lambda name: -self.output_errors[name])  # stable: ties in layer order
        self.float_layers = sorted(ranked[:count], key=in_order.index)
        for name in self.float_layers:
            remove_head_quantizers(model.get_submodule(name))
            log.info("keeping %s in float (fa_amp): output error %.3g", name, self.output_errors[name])
        return self.float_layers

    def report(self) -> dict[str, Any]:
        """What to log: fa_amp, the layers kept in float, each layer's output error."""
        return {
            "fa_quant_type": FA_TYPE,
            "fa_amp": self.fa_amp,
            "float_layers": list(self.float_layers),
            "output_error": dict(self.output_errors),
        }


# -- saved format ---------------------------------------------------------------------------


def attention_names(model: nn.Module) -> list[str]:
    return [layer_name(i, "self_attn") for i in range(len(decoder_layers(model)))]


def attention_quant_description(model: nn.Module) -> dict[str, str]:
    """Description entries: every ``fa_*`` tensor as FAQuant, plus ``fa_quant_type`` when there are any."""
    entries: dict[str, str] = {}
    for name in attention_names(model):
        if has_head_quantizers(model.get_submodule(name)):
            for state in STATES:
                entries[f"{name}.{quantizer_name(state)}.scale"] = FA_TYPE
                entries[f"{name}.{quantizer_name(state)}.offset"] = FA_TYPE
    if entries:
        entries["fa_quant_type"] = FA_TYPE
    return entries


def restore_attention_quant(model: nn.Module, tensor_names: Iterable[str]) -> list[str]:
    """Before loading a saved state dict: install quantizers where the file has ``fa_*`` tensors and
    switch to the quantizing attention. Returns the attention layers restored."""
    names = set(tensor_names)
    restored = [n for n in attention_names(model) if f"{n}.{quantizer_name('q')}.scale" in names]
    for name in restored:
        install_head_quantizers(model.get_submodule(name))
    if restored:
        use_quantized_attention(model)
    return restored
