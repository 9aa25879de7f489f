"""Rebuild the fake-quant model from a saved output directory (config.json + weights)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from quant.anti_outlier.base import add_norm_bias
from quant.arch import get_module, norm_modules, set_module
from quant.attention_quant import restore_attention_quant
from quant.checkpoint import empty_model
from quant.device import resolve_device
from quant.errors import QuantInputError
from quant.export import MINDIE_NORM_COPIES
from quant.kv_cache import restore_kv_cache_quant
from quant.placement import spread_over_devices
from quant.schemes import SCHEMES, module_from_saved


@dataclass
class ReloadedModel:
    model: torch.nn.Module
    tokenizer: Any
    description: dict[str, Any]
    quant_type: str


def find_description(directory: Path) -> Path:
    """The description JSON of an output directory (plain or mindie-format name)."""
    candidates = sorted(directory.glob("quant_model_description*.json"))
    if not candidates:
        raise QuantInputError("save_directory", f"{directory} has no quant_model_description*.json")
    return candidates[0]


def saved_weight_files(directory: Path, quant_type: str) -> list[Path]:
    """The saved weight file, or the shards its index JSON lists."""
    single = directory / f"quant_model_weight_{quant_type.lower()}.safetensors"
    index = directory / f"{single.name}.index.json"
    if index.is_file():
        return [directory / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if not single.is_file():
        raise QuantInputError("save_directory", f"{directory} has no {single.name}")
    return [single]


def read_tensors(directory: Path, quant_type: str) -> dict[str, torch.Tensor]:
    """All saved tensors, from one file or from the shards an index JSON lists."""
    tensors: dict[str, torch.Tensor] = {}
    for path in saved_weight_files(directory, quant_type):
        tensors.update(load_file(str(path)))
    return tensors


def iter_saved_tensors(directory: Path, quant_type: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Each saved tensor in turn, read alone: the file is opened per tensor, so its memory mapping
    (whose touched pages count as resident) never holds more than that tensor."""
    for path in saved_weight_files(directory, quant_type):
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
        for name in names:
            with safe_open(str(path), framework="pt") as handle:
                yield name, handle.get_tensor(name)


def materialize_meta(model: torch.nn.Module) -> None:
    """Give every parameter and saved buffer still on ``meta`` uninitialised CPU memory of its shape
    and dtype, for the strict ``load_state_dict`` that follows to fill; tied parameters stay tied."""
    done: dict[int, torch.Tensor] = {}

    def real(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            done[id(t)] = torch.empty_like(t, device="cpu")
        return done[id(t)]

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                module._parameters[name] = torch.nn.Parameter(real(param), requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                if name in module._non_persistent_buffers_set:  # nothing would fill it
                    raise RuntimeError(f"reload: non-saved buffer {name} of {type(module).__name__} is on meta")
                module._buffers[name] = real(buffer)


def load_quantized(
    directory: str | Path,
    device_type: str = "cpu",
    devices: Sequence[str] | None = None,
    max_memory: Mapping[str, int] | None = None,
) -> ReloadedModel:
    """Build the architecture from config.json with its weights on ``meta``, swap in each scheme's
    module where the description says so (shaped like the saved tensors), and load every saved
    tensor strictly. No float weight of a quantized linear is ever allocated: the reloaded model
    holds the integers as stored, the float layers in float32. ``devices`` (e.g. ``["cuda:0",
    "cuda:1"]``) spreads the decoder layers over several devices (:mod:`quant.placement`, budgets
    ``max_memory`` in bytes per device, else a share of each device's memory) instead of ``device_type``."""
    directory = Path(directory)
    description = json.loads(find_description(directory).read_text())
    quant_type = description["model_quant_type"]
    tensors = read_tensors(directory, quant_type)
    config = AutoConfig.from_pretrained(directory)
    model = empty_model(config, torch.float32)

    norms = norm_modules(model)
    for norm in norms:  # mindie_format copies of the norms' weight and bias; the model reads the originals
        for suffix in MINDIE_NORM_COPIES:
            tensors.pop(f"{norm}.{suffix}", None)
    module_types = {name.rpartition(".")[0]: t for name, t in description.items() if name in tensors and t in SCHEMES}
    for name, qtype in module_types.items():
        saved = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
        set_module(model, name, module_from_saved(qtype, get_module(model, name), saved))
    for name, norm in norms.items():
        if f"{name}.bias" in tensors:
            add_norm_bias(norm)
    for name, module in model.named_modules():
        # Float linears that anti-outlier gave a bias (m2's shift); LLaMA linears have none.
        if isinstance(module, torch.nn.Linear) and module.bias is None and f"{name}.bias" in tensors:
            module.bias = torch.nn.Parameter(torch.zeros(module.out_features), requires_grad=False)
    restore_kv_cache_quant(model, tensors)
    restore_attention_quant(model, tensors)
    materialize_meta(model)
    model.load_state_dict(tensors, strict=True)
    if devices:
        spread_over_devices(model, devices, max_memory)
    else:
        model = model.to(resolve_device(device_type))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return ReloadedModel(model, tokenizer, description, quant_type)
