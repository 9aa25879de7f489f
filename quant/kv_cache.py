"""KV-cache int8 (``use_kvcache_quant``, type C8): per-channel scales of the k_proj / v_proj outputs.

SPEC §4 [exact]: per output channel of the k_proj / v_proj outputs BEFORE RoPE,
``kv_cache_scale = amax / 127``, ``kv_cache_offset = 0``, float, size n_kv·head_dim, saved as
``<layer>.self_attn.k_proj.kv_cache_scale`` / ``kv_cache_offset`` (and v_proj).

The evaluated model quantizes its cache the same way: the two tensors become buffers of the
projection module itself (so ``state_dict()`` names them exactly as saved) and a forward hook
fake-quantizes the projection's output with them, before RoPE and before the cache stores it.
The projection stays whatever it is (float ``nn.Linear`` or ``QuantLinear``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quant.arch import decoder_layers, layer_name
from quant.calib_data import Batch
from quant.layerwise import iterate_layer_inputs
from quant.quantizers import fake_quantize_activation, symmetric_params

KV_TYPE = "C8"
KV_BITS = 8
KV_PROJECTIONS = ("k_proj", "v_proj")
SCALE = "kv_cache_scale"
OFFSET = "kv_cache_offset"
_HOOK_ATTR = "_kv_cache_hook"


def kv_projection_names(model: nn.Module) -> list[str]:
    """Full names of every k_proj / v_proj, in layer order."""
    return [layer_name(i, f"self_attn.{p}") for i in range(len(decoder_layers(model))) for p in KV_PROJECTIONS]


def add_kv_cache_quant(projection: nn.Module, scale: torch.Tensor | None = None) -> None:
    """Give a k/v projection its ``kv_cache_scale`` / ``kv_cache_offset`` buffers and the hook
    that fake-quantizes its output with them (scale 1 until given, e.g. before a state-dict load)."""
    out_features = projection.out_features
    device = projection.weight.device  # nn.Linear parameter or QuantLinear buffer
    value = torch.ones(out_features) if scale is None else scale.detach().float().reshape(out_features)
    projection.register_buffer(SCALE, value.to(device))  # (n_kv * head_dim,)
    projection.register_buffer(OFFSET, torch.zeros(out_features, device=device))
    if getattr(projection, _HOOK_ATTR, None) is None:
        setattr(projection, _HOOK_ATTR, projection.register_forward_hook(_fake_quantize_output))


def _fake_quantize_output(module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
    # output: (batch, seq, n_kv * head_dim); the per-channel scale broadcasts over the last dim.
    return fake_quantize_activation(output, getattr(module, SCALE), getattr(module, OFFSET))


@dataclass
class KVCacheCalibrator:
    """The KV-cache scales, measured on the smoothed FLOAT model (SPEC §4 [exact]).

    :meth:`observe` runs every calibration batch through the float model one decoder layer at a
    time, with forward hooks taking the running per-channel max |output| of every k_proj and
    v_proj over all tokens; nothing is quantized meanwhile. :meth:`apply` then gives each
    projection ``scale = amax / 127`` and makes it fake-quantize its output (after the linears
    are quantized: the projection module it attaches to is the final one).
    """

    amax: dict[str, torch.Tensor] = field(default_factory=dict)

    def observe(self, model: nn.Module, batches: Sequence[Batch]) -> KVCacheCalibrator:
        handles = [
            model.get_submodule(name).register_forward_hook(self.observer(name)) for name in kv_projection_names(model)
        ]
        try:
            for _ in iterate_layer_inputs(model, batches, lambda _i, _layer: {}):
                pass
        finally:
            for handle in handles:
                handle.remove()
        return self

    def apply(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        """Give every observed projection (or those of ``names``) its scale and the fake-quant hook on its output."""
        for name in self.amax if names is None else names:
            add_kv_cache_quant(model.get_submodule(name), self.scale(name))

    def scale(self, name: str) -> torch.Tensor:
        """``amax / 127`` of the projection called ``name``, (n_kv * head_dim,)."""
        return symmetric_params(self.amax[name], KV_BITS)[0]

    def observer(self, name: str):
        """The forward hook folding projection ``name``'s output into its running channel max."""

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            batch_amax = output.detach().abs().float().reshape(-1, output.shape[-1]).amax(dim=0)  # (n_kv * head_dim,)
            seen = self.amax.get(name)
            self.amax[name] = batch_amax if seen is None else torch.maximum(seen, batch_amax)

        return hook

    def report(self) -> dict[str, Any]:
        """What to log: per projection the largest and smallest channel scale."""
        return {
            "kv_cache_type": KV_TYPE,
            "scales": {
                name: {"max": float(self.scale(name).max()), "min": float(self.scale(name).min())} for name in self.amax
            },
        }


def kv_cache_description(model: nn.Module) -> dict[str, str]:
    """Description entries (SPEC §7): every KV tensor as C8, plus ``kv_cache_type`` / ``kv_quant_type``."""
    entries: dict[str, str] = {}
    for name in kv_projection_names(model):
        if hasattr(model.get_submodule(name), SCALE):
            entries[f"{name}.{SCALE}"] = KV_TYPE
            entries[f"{name}.{OFFSET}"] = KV_TYPE
    if entries:
        entries["kv_cache_type"] = KV_TYPE
        entries["kv_quant_type"] = KV_TYPE
    return entries


def restore_kv_cache_quant(model: nn.Module, tensor_names: Iterable[str]) -> list[str]:
    """Before loading a saved state dict: give every projection with saved KV tensors its buffers
    and hook. Returns the projections restored."""
    names = set(tensor_names)
    restored = [n for n in kv_projection_names(model) if f"{n}.{SCALE}" in names]
    for name in restored:
        add_kv_cache_quant(model.get_submodule(name))
    return restored
