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
from torch import nn

from quant.arch import norm_modules
from quant.attention_quant import attention_quant_description
from quant.config import QuantConfig
from quant.errors import QuantInputError
from quant.kv_cache import KV_TYPE, kv_cache_description
from quant.qlinear import QuantLinear
from quant.quant_types import QuantType
from quant.schemes.spec import is_per_group
from quant.shard_writer import ShardWriter

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
        description[name] = module.quant_type if module is not None else QuantType.FLOAT
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
    norm_names: list[str], tensors: dict[str, torch.Tensor], quant_type: str
) -> dict[str, tuple[torch.Tensor, str]]:
    """``<norm>.module.weight`` / ``.module.bias`` for every norm that carries a (smoothing) bias.

    ``norm_names``: the norms (full names, module order) whose saved tensors are in ``tensors``.
    They copy the norm's saved weight and bias and are typed with the model's quant type (the
    reference types them W8A8 in a W8A8 model, ``model.norm`` included, although lm_head stays float).
    """
    entries: dict[str, tuple[torch.Tensor, str]] = {}
    for norm in norm_names:
        if f"{norm}.bias" not in tensors:
            continue
        for suffix, source in MINDIE_NORM_COPIES.items():
            entries[f"{norm}.{suffix}"] = (tensors[f"{norm}.{source}"].detach().to("cpu").clone(), quant_type)
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


class ModelWriter:
    """Writes a quantized model in the reference's format module by module, as the model is made.

    :meth:`write` adds a submodule's saved tensors (its state dict under its full names) to the
    weight file(s) at once, so a layer-wise caller may free the module right after; :meth:`finish`
    writes the description, config.json, tokenizer and extra files and moves the output into place.
    Tensors must come in the model's state-dict order (embeddings, layers, final norm, lm_head) for
    the files to equal the in-memory save's. Everything goes to a temporary directory beside the
    target; :meth:`abort` (or a failure in :meth:`finish`) removes it.
    """

    def __init__(
        self,
        save_directory: str | Path,
        *,
        quant_type: str,
        overwrite: bool = False,
        part_file_size: float | None = None,
        mindie_format: bool = False,
    ) -> None:
        self.target = check_save_directory(save_directory, overwrite)
        self.quant_type = quant_type
        self.mindie_format = mindie_format
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        max_bytes = None if part_file_size is None else int(part_file_size * BYTES_PER_GB)
        self.shards = ShardWriter(
            self.tmp, weight_file_name(quant_type), lambda i, n: shard_file_name(quant_type, i, n), max_bytes
        )
        self._norm_copies: dict[str, tuple[torch.Tensor, str]] = {}  # mindie_format: written after the rest

    def write(self, model: nn.Module, prefix: str = "") -> None:
        """Write the saved tensors of ``model``'s submodule ``prefix`` (the whole model when empty).

        Tied weights (lm_head and the embedding of e.g. SmolLM2) are written as separate tensors:
        safetensors refuses shared memory, the reference crashes on them.
        """
        module = model.get_submodule(prefix) if prefix else model
        tensors = module.state_dict(prefix=f"{prefix}." if prefix else "")
        for name, tensor in tensors.items():
            self.shards.add(name, tensor)
        if self.mindie_format:
            norms = [n for n in norm_modules(model) if not prefix or n == prefix or n.startswith(f"{prefix}.")]
            self._norm_copies.update(mindie_norm_entries(norms, tensors, self.quant_type))

    def finish(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        original_dtype: torch.dtype | None = None,
        extra_json: dict[str, Any] | None = None,
        config_updates: dict[str, Any] | None = None,
    ) -> SavedOutput:
        """Write the rest of the output and move it into place; ``model`` gives the modules' types
        (its tensors may be freed) and config."""
        try:
            for name, (tensor, _qtype) in self._norm_copies.items():
                self.shards.add(name, tensor)
            tensor_names = list(self.shards.names)
            description = describe_tensors(model, tensor_names, self.quant_type)
            if self.mindie_format:
                description.update({name: qtype for name, (_t, qtype) in self._norm_copies.items()})
            else:
                description["version"] = DESCRIPTION_VERSION
            description = ordered_description(description, tensor_names)
            weight_paths, weight_map = self.shards.close()
            if self.shards.max_bytes is not None:
                index = {"metadata": {"total_size": self.shards.total_bytes}, "weight_map": weight_map}
                _write_json(self.tmp / f"{weight_file_name(self.quant_type)}.index.json", index)
            desc_path = self.tmp / description_file_name(self.quant_type, self.mindie_format)
            _write_json(desc_path, description)
            _save_config(model, self.tmp, original_dtype, config_updates)
            _save_tokenizer(tokenizer, self.tmp)
            for file_name, payload in (extra_json or {}).items():
                _write_json(self.tmp / file_name, payload)
            _move_into_place(self.tmp, self.target)
        except BaseException:
            self.abort()
            raise
        target = self.target
        total = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
        return SavedOutput(target, [target / p.name for p in weight_paths], target / desc_path.name, total)

    def abort(self) -> None:
        """Remove everything written so far."""
        shutil.rmtree(self.tmp, ignore_errors=True)


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
    writer = ModelWriter(
        save_directory,
        quant_type=quant_type,
        overwrite=overwrite,
        part_file_size=part_file_size,
        mindie_format=mindie_format,
    )
    try:
        writer.write(model)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(
        model, tokenizer, original_dtype=original_dtype, extra_json=extra_json, config_updates=config_updates
    )


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
    # transformers records how it read a GGUF source (quant_method "gguf"); the saved model is not GGUF
    # (and the layer-wise path, which reads the file itself, has no such entry).
    source_quantizer = values.get("quantization_config")
    if isinstance(source_quantizer, dict) and source_quantizer.get("quant_method") == "gguf":
        del values["quantization_config"]
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
