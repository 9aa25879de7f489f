"""Writing a quantized model in the reference's format (SPEC §7), atomically.

Everything is written to a hidden temporary directory beside the target and renamed into
place at the end, so an interrupted save never leaves a complete-looking output.

``part_file_size`` (GB, 1 GB = 2^30 bytes, fractions allowed) shards the weights into
``quant_model_weight_<type>-0000i-of-0000N.safetensors`` plus the index
``quant_model_weight_<type>.safetensors.index.json``; ``mindie_format`` names the description
``quant_model_description_<type>.json`` (no version), adds ``<norm>.module.weight`` /
``<norm>.module.bias`` for every smoothed norm and ``quantize`` / ``quantization_config`` to config.json.
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

from quant.arch import norm_modules
from quant.attention_quant import attention_quant_description
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.kv_cache import KV_TYPE, kv_cache_description
from quant.qlinear import QuantLinear
from quant.schemes.spec import is_per_group

DESCRIPTION_VERSION = "1.0.0"
LAYER_REPORT_FILE = "quant_layer_report.json"
RECIPE_FILE = "quant_recipe.json"
BYTES_PER_GB = 1024**3
# mindie_format's extra norm entries and the saved tensor each one copies.
MINDIE_NORM_COPIES = {"module.weight": "weight", "module.bias": "bias"}


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


# Model-level description keys, written before the tensor entries in this order (as the reference).
_META_ORDER = ("version", "model_quant_type", "kv_cache_type", "kv_quant_type", "fa_quant_type", "group_size")


def describe_tensors(model: nn.Module, tensor_names: list[str], quant_type: str) -> dict[str, Any]:
    """The description JSON: every saved tensor name mapped to its type string.

    Per-group schemes add ``group_size`` (SPEC §7 for W4A8_DYNAMIC; W4A16/W8A16 per group too).
    """
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    description: dict[str, Any] = {"model_quant_type": quant_type}
    group_sizes = {m.group_size for m in quantized.values() if m.group_size is not None}
    if group_sizes:
        (description["group_size"],) = group_sizes  # one recipe, one group size
    for name in tensor_names:
        module_name = name.rpartition(".")[0]
        module = quantized.get(module_name)
        description[name] = module.quant_type if module is not None else "FLOAT"
    # KV-cache (C8) and attention (FAQuant) tensors, and their model-level type keys.
    description.update(kv_cache_description(model))
    description.update(attention_quant_description(model))
    return description


def ordered_description(description: dict[str, Any], tensor_names: list[str]) -> dict[str, Any]:
    """The reference's key order: the model-level keys, then the tensors module by module, a
    projection's KV-cache (C8) entries before its own, a norm's mindie copies right after it."""
    ordered = {k: description[k] for k in _META_ORDER if k in description}
    by_module: dict[str, list[str]] = {}
    for name in tensor_names:
        copy_of_norm = name.endswith(tuple("." + suffix for suffix in MINDIE_NORM_COPIES))
        module = name.rsplit(".", 2 if copy_of_norm else 1)[0]
        by_module.setdefault(module, []).append(name)
    for names in by_module.values():
        kv = [n for n in names if description.get(n) == KV_TYPE]
        copies = [n for n in names if n.endswith(tuple("." + suffix for suffix in MINDIE_NORM_COPIES))]
        own = [n for n in names if n not in kv and n not in copies]
        ordered.update({n: description[n] for n in kv + own + copies})
    ordered.update({k: v for k, v in description.items() if k not in ordered})
    return ordered


def mindie_norm_entries(
    model: nn.Module, tensors: dict[str, torch.Tensor], quant_type: str
) -> dict[str, tuple[torch.Tensor, str]]:
    """``<norm>.module.weight`` / ``.module.bias`` for every norm that carries a (smoothing) bias.

    They copy the norm's saved weight and bias and are typed with the model's quant type (the
    reference types them W8A8 in a W8A8 model, ``model.norm`` included, although lm_head stays float).
    """
    entries: dict[str, tuple[torch.Tensor, str]] = {}
    for norm in norm_modules(model):
        if f"{norm}.bias" not in tensors:
            continue
        for suffix, source in MINDIE_NORM_COPIES.items():
            entries[f"{norm}.{suffix}"] = (tensors[f"{norm}.{source}"].clone(), quant_type)
    return entries


def mindie_quantization_config(cfg: QuantConfig) -> dict[str, Any]:
    """What the reference's mindie_format adds to config.json: ``quantize`` and ``quantization_config``."""
    return {
        "quantize": cfg.quant_type.lower(),
        "quantization_config": {
            "group_size": cfg.group_size if is_per_group(cfg) else 0,
            "kv_quant_type": KV_TYPE if cfg.use_kvcache_quant else None,
            "fa_quant_type": "FAQuant" if cfg.use_fa_quant else None,
            "w_bit": cfg.w_bit,
            "a_bit": cfg.a_bit,
            "dev_type": cfg.device_type,
            "fraction": cfg.fraction,
            "act_method": cfg.act_method,
            "co_sparse": cfg.co_sparse,
            "anti_method": cfg.anti_method if cfg.anti_method != "none" else "",
            "disable_level": cfg.disable_level,
            "do_smooth": cfg.do_smooth,
            "use_sigma": cfg.use_sigma,
            "sigma_factor": cfg.sigma_factor,
            "is_lowbit": cfg.is_lowbit,
            "mm_tensor": cfg.mm_tensor,
            "w_sym": cfg.w_sym,
            "open_outlier": cfg.open_outlier,
            "is_dynamic": cfg.is_dynamic,
        },
    }


def shard_file_name(quant_type: str, index: int, count: int) -> str:
    return weight_file_name(quant_type).replace(".safetensors", f"-{index:05d}-of-{count:05d}.safetensors")


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order: a shard is closed before it would exceed ``max_bytes``.

    A tensor larger than ``max_bytes`` gets a shard of its own.
    """
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weights(
    tensors: dict[str, torch.Tensor], directory: Path, quant_type: str, part_file_size: float | None = None
) -> list[Path]:
    """One safetensors file, or shards plus the index JSON (``metadata.total_size``, ``weight_map``)."""
    if part_file_size is None:
        path = directory / weight_file_name(quant_type)
        save_file(tensors, str(path), metadata={"format": "pt"})
        return [path]
    plan = plan_shards(tensors, int(part_file_size * BYTES_PER_GB))
    paths, weight_map = [], {}
    for i, names in enumerate(plan, start=1):
        path = directory / shard_file_name(quant_type, i, len(plan))
        save_file({n: tensors[n] for n in names}, str(path), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, path.name))
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_json(directory / f"{weight_file_name(quant_type)}.index.json", index)
    return paths


SAVE_DIRECTORY_VALID = "valid: a new or empty directory in a writable location"


def check_save_directory(save_directory: str | Path, overwrite: bool = False) -> Path:
    """Fail early (before any work) when ``save_directory`` cannot receive the output."""
    target = Path(save_directory).expanduser()
    if target.exists() and not target.is_dir():
        raise QuantInputError("save_directory", f"{save_directory} is a file; {SAVE_DIRECTORY_VALID}")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise QuantInputError(
            "save_directory", f"{save_directory} is not empty; {SAVE_DIRECTORY_VALID} (or allow overwrite)"
        )
    # The output is written beside the target first (temp dir + rename), so probe the nearest existing ancestor.
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise QuantInputError("save_directory", f"{ancestor} (in {save_directory}) is a file; {SAVE_DIRECTORY_VALID}")
    probe_writable(ancestor, save_directory)
    return target


def probe_writable(directory: Path, save_directory: str | Path) -> None:
    """Create and remove a temp dir in ``directory``: os.access cannot tell for root or read-only mounts."""
    try:
        Path(tempfile.mkdtemp(prefix=".quant-llama-probe-", dir=directory)).rmdir()
    except OSError as exc:
        raise QuantInputError(
            "save_directory", f"{save_directory} is not writable ({exc.strerror}); {SAVE_DIRECTORY_VALID}"
        ) from None


def save_quantized(
    model: nn.Module,
    tokenizer: Any,
    save_directory: str | Path,
    *,
    quant_type: str,
    original_dtype: torch.dtype | None = None,
    extra_json: dict[str, Any] | None = None,
    overwrite: bool = False,
    part_file_size: float | None = None,
    mindie_format: bool = False,
    config_updates: dict[str, Any] | None = None,
) -> SavedOutput:
    """Write weights, description, config.json, tokenizer files and ``extra_json`` files.

    ``config_updates``: keys added to config.json (mindie_format: :func:`mindie_quantization_config`).
    """
    target = check_save_directory(save_directory, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tensors = collect_tensors(model)
        description = describe_tensors(model, list(tensors), quant_type)
        if mindie_format:
            for name, (tensor, qtype) in mindie_norm_entries(model, tensors, quant_type).items():
                tensors[name] = tensor
                description[name] = qtype
        else:
            description["version"] = DESCRIPTION_VERSION
        description = ordered_description(description, list(tensors))
        weight_paths = write_weights(tensors, tmp, quant_type, part_file_size)
        desc_path = tmp / description_file_name(quant_type, mindie_format)
        _write_json(desc_path, description)
        _save_config(model, tmp, original_dtype, config_updates)
        _save_tokenizer(tokenizer, tmp)
        for file_name, payload in (extra_json or {}).items():
            _write_json(tmp / file_name, payload)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    return SavedOutput(target, [target / p.name for p in weight_paths], target / desc_path.name, total)


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def _save_config(
    model: nn.Module, directory: Path, original_dtype: torch.dtype | None, updates: dict[str, Any] | None = None
) -> None:
    """config.json in transformers' current form, plus the keys older loaders read.

    transformers 5 writes ``dtype`` and ``rope_parameters``; loaders built on transformers 4 (the
    reference's serving stack among them) read ``torch_dtype``, ``rope_theta`` and ``rope_scaling``,
    and would silently fall back to defaults (rope_theta 10000 for a LLaMA-3 model) without them.
    """
    config = copy.deepcopy(model.config)
    if original_dtype is not None:
        config.dtype = original_dtype
    config.save_pretrained(directory)
    path = directory / "config.json"
    values = json.loads(path.read_text(encoding="utf-8"))
    if "dtype" in values:
        values.setdefault("torch_dtype", values["dtype"])
    rope = values.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        values.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        values.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
    values.update(updates or {})
    _write_json(path, values)


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
