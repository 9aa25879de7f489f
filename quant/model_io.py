"""Load a float LLaMA-family model and its tokenizer: local HF directory, GGUF file or hub id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from quant.device import resolve_device
from quant.errors import QuantInputError
from quant.model_source import ModelSource, resolve_model_source

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Where a GGUF bundle may keep a ready HF tokenizer next to the .gguf file.
_TOKENIZER_SUBDIRS = ("", "hf_tokenizer")


@dataclass
class LoadedModel:
    """A float model ready to quantize, with what export needs to know about its source."""

    model: PreTrainedModel
    tokenizer: Any
    source: str
    original_dtype: torch.dtype
    fingerprint: str


def _has_safetensors(directory: Path) -> bool:
    return any(directory.glob("*.safetensors"))


def _check_pickle_policy(source: ModelSource, allow_pickle: bool) -> None:
    if source.kind != "hf_dir" or allow_pickle:
        return
    directory = Path(source.location)
    if not _has_safetensors(directory) and any(p.suffix in _PICKLE_SUFFIXES for p in directory.iterdir()):
        raise QuantInputError(
            "model_path",
            f"{source.location} holds only pickle checkpoints (.bin/.pt), which can run code when loaded; "
            "convert to safetensors or opt in with allow_pickle=True",
        )


def load_tokenizer(
    source: ModelSource, *, trust_remote_code: bool = False, tokenizer_args: dict[str, Any] | None = None
) -> Any:
    """The tokenizer the reference uses: left padding, pad token = unk unless ``tokenizer_args`` says."""
    args: dict[str, Any] = {"padding_side": "left", "trust_remote_code": trust_remote_code}
    args.update(tokenizer_args or {})
    if source.kind == "gguf":
        base = Path(source.location).parent
        for sub in _TOKENIZER_SUBDIRS:
            candidate = base / sub
            if (candidate / "tokenizer.json").is_file() or (candidate / "tokenizer.model").is_file():
                tokenizer = AutoTokenizer.from_pretrained(str(candidate), **args)
                break
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(base), gguf_file=source.gguf_file, **args)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **args)
    if "pad_token" not in (tokenizer_args or {}):
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(
    model_path: str,
    *,
    device_type: str = "cpu",
    trust_remote_code: bool = False,
    tokenizer_args: dict[str, Any] | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load the float model (float32 on CPU, the checkpoint's dtype on an accelerator) and tokenizer."""
    source = resolve_model_source(model_path)
    _check_pickle_policy(source, allow_pickle)
    device = resolve_device(device_type)
    config = load_config(source, trust_remote_code)
    original_dtype = checkpoint_dtype(config)
    dtype = torch.float32 if device.type == "cpu" else original_dtype
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if source.kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(source.directory, gguf_file=source.gguf_file, **kwargs)
    else:
        kwargs["use_safetensors"] = None if allow_pickle else True
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, tokenizer_args=tokenizer_args)
    return LoadedModel(model, tokenizer, source.location, original_dtype, fingerprint_source(source))


def load_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The model config of ``source`` (read from the GGUF metadata for a GGUF file)."""
    if source.kind == "gguf":
        return AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
    return AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)


def checkpoint_dtype(config: Any) -> torch.dtype:
    """The dtype the checkpoint stores its weights in (float32 when the config does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def fingerprint_source(source: ModelSource) -> str:
    """A content key for the model's weights: names, sizes and mtimes of the weight files.

    Cheap (no full read) yet changes whenever a weight file is replaced; hub ids key by name.
    """
    digest = hashlib.sha256(source.kind.encode())
    if source.kind == "hub":
        digest.update(source.location.encode())
        return digest.hexdigest()[:16]
    root = Path(source.location)
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    for p in files:
        stat = p.stat()
        digest.update(f"{p.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
