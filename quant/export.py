"""Writing a quantized model in the reference's format (SPEC §7), atomically.

Everything is written to a hidden temporary directory beside the target and renamed into
place at the end, so an interrupted save never leaves a complete-looking output.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from quant.attention_quant import attention_quant_description
from quant.errors import QuantInputError
from quant.kv_cache import kv_cache_description
from quant.qlinear import QuantLinear

DESCRIPTION_VERSION = "1.0.0"
LAYER_REPORT_FILE = "quant_layer_report.json"
RECIPE_FILE = "quant_recipe.json"


@dataclass
class SavedOutput:
    """What was written: the directory, the weight file(s) and the description."""

    directory: Path
    weight_files: list[Path]
    description_file: Path
    total_bytes: int


def weight_file_name(quant_type: str) -> str:
    return f"quant_model_weight_{quant_type.lower()}.safetensors"


def description_file_name(quant_type: str, mindie_format: bool = False) -> str:
    return f"quant_model_description_{quant_type.lower()}.json" if mindie_format else "quant_model_description.json"


def collect_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's saved tensors: its state dict, each tensor its own contiguous CPU copy.

    Tied weights (lm_head and the embedding of e.g. SmolLM2) become two separate tensors:
    safetensors refuses shared memory, the reference crashes on them.
    """
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}


def describe_tensors(model: nn.Module, tensor_names: list[str], quant_type: str) -> dict[str, Any]:
    """The description JSON: every saved tensor name mapped to its type string."""
    owners = {name: m.quant_type for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    description: dict[str, Any] = {"model_quant_type": quant_type}
    for name in tensor_names:
        module_name = name.rpartition(".")[0]
        description[name] = owners.get(module_name, "FLOAT")
    # KV-cache (C8) and attention (FAQuant) tensors, and their model-level type keys.
    description.update(kv_cache_description(model))
    description.update(attention_quant_description(model))
    return description


def check_save_directory(save_directory: str | Path, overwrite: bool = False) -> Path:
    """Fail early (before any work) when ``save_directory`` cannot receive the output."""
    target = Path(save_directory).expanduser()
    if target.exists() and not target.is_dir():
        raise QuantInputError("save_directory", f"{save_directory} is a file, not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise QuantInputError(
            "save_directory", f"{save_directory} is not empty; choose a new directory or allow overwrite"
        )
    parent = target.parent if not target.exists() else target
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise QuantInputError("save_directory", f"{save_directory} is not writable")
    return target


def save_quantized(
    model: nn.Module,
    tokenizer: Any,
    save_directory: str | Path,
    *,
    quant_type: str,
    original_dtype: torch.dtype | None = None,
    extra_json: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> SavedOutput:
    """Write weights, description, config.json, tokenizer files and ``extra_json`` files."""
    target = check_save_directory(save_directory, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tensors = collect_tensors(model)
        weight_path = tmp / weight_file_name(quant_type)
        save_file(tensors, str(weight_path), metadata={"format": "pt"})
        description = {**describe_tensors(model, list(tensors), quant_type), "version": DESCRIPTION_VERSION}
        desc_path = tmp / description_file_name(quant_type)
        _write_json(desc_path, description)
        _save_config(model, tmp, original_dtype)
        _save_tokenizer(tokenizer, tmp)
        for file_name, payload in (extra_json or {}).items():
            _write_json(tmp / file_name, payload)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    return SavedOutput(target, [target / weight_path.name], target / desc_path.name, total)


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def _save_config(model: nn.Module, directory: Path, original_dtype: torch.dtype | None) -> None:
    config = copy.deepcopy(model.config)
    if original_dtype is not None:
        config.dtype = original_dtype
    config.save_pretrained(directory)


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    tokenizer.save_pretrained(directory)
    special = directory / "special_tokens_map.json"
    if not special.exists():  # newer transformers fold it into tokenizer_config.json
        _write_json(special, {k: str(v) for k, v in tokenizer.special_tokens_map.items()})


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first and removed last."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
