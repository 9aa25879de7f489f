"""The loaded float model as a disk cache entry: safetensors + config, reloaded in about a second.

Loading a GGUF file dequantizes every tensor and parses its metadata (tens of seconds per
process for SmolLM2-135M); the entry holds the result so later processes skip that work. The
tokenizer is not cached: it is always loaded from the model's own source.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from quant.device import resolve_device
from quant.model_io import LoadedModel, ModelSource, fingerprint_source, load_tokenizer

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


def float_model_key_parts(source: ModelSource, device_type: str, trust_remote_code: bool) -> list[Any]:
    """What a cached float model depends on: the source's content, where it runs, the converter."""
    return [
        "float_model",
        source.kind,
        fingerprint_source(source),
        device_type,
        trust_remote_code,
        transformers.__version__,  # the GGUF conversion lives in transformers
        torch.__version__,
    ]


def write_float_model(directory: Path, loaded: LoadedModel) -> None:
    """Write the model's weights (tied tensors once), config, generation config and load facts."""
    model = loaded.model
    save_model(model, str(directory / WEIGHTS_FILE))
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    meta = {
        "source": loaded.source,
        "fingerprint": loaded.fingerprint,
        "original_dtype": str(loaded.original_dtype).removeprefix("torch."),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_float_model(
    directory: Path,
    source: ModelSource,
    *,
    device_type: str = "cpu",
    trust_remote_code: bool = False,
    tokenizer_args: dict[str, Any] | None = None,
) -> LoadedModel:
    """The :class:`LoadedModel` that ``quant.model_io.load_model`` returned when the entry was written.

    Same tensors, buffers, config and generation config; the tokenizer comes from ``source``.
    """
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    # A GGUF-loaded config names its quantizer; the cached weights are plain float tensors, so
    # build without it and give the model its original config afterwards (export writes it).
    build_config = copy.deepcopy(config)
    if hasattr(build_config, "quantization_config"):
        del build_config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        config=build_config,
        dtype=getattr(torch, meta["dtype"]),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    config._name_or_path = source.directory  # as when loaded from the source itself
    model.config = config
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    model = model.to(resolve_device(device_type)).eval()
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, tokenizer_args=tokenizer_args)
    return LoadedModel(model, tokenizer, meta["source"], getattr(torch, meta["original_dtype"]), meta["fingerprint"])
