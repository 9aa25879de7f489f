"""Load a float LLaMA-family model and its tokenizer: local HF directory, GGUF file or hub id."""

from __future__ import annotations

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


def gguf_tokenizer_dir(source: ModelSource) -> Path | None:
    """The ready HF tokenizer beside a GGUF file, if there is one (else the GGUF's own is used)."""
    base = Path(source.location).parent
    for sub in _TOKENIZER_SUBDIRS:
        candidate = base / sub
        if (candidate / "tokenizer.json").is_file() or (candidate / "tokenizer.model").is_file():
            return candidate
    return None


def source_files(source: ModelSource) -> list[Path]:
    """The local files a load reads: every file of an HF directory; a GGUF file and its tokenizer
    directory's files. Empty for a hub id."""
    if source.kind == "hub":
        return []
    if source.kind == "hf_dir":
        return sorted(p for p in Path(source.location).iterdir() if p.is_file())
    tokenizer_dir = gguf_tokenizer_dir(source)
    extra = sorted(p for p in tokenizer_dir.iterdir() if p.is_file()) if tokenizer_dir is not None else []
    return [Path(source.location), *(p for p in extra if p != Path(source.location))]


def load_tokenizer(
    source: ModelSource, *, trust_remote_code: bool = False, tokenizer_args: dict[str, Any] | None = None
) -> Any:
    """The tokenizer the reference uses: left padding, pad token = unk unless ``tokenizer_args`` says."""
    args: dict[str, Any] = {"padding_side": "left", "trust_remote_code": trust_remote_code}
    args.update(tokenizer_args or {})
    if source.kind == "gguf":
        directory = gguf_tokenizer_dir(source)
        if directory is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), **args)
        else:
            base = Path(source.location).parent
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
        # from_pretrained dequantizes the whole file into a state dict beside the model (twice the
        # model's bytes at the peak); read it tensor by tensor into a skeleton instead, same values.
        from quant.checkpoint import read_whole_model  # quant.checkpoint imports this module

        model = read_whole_model(model_path, device_type, trust_remote_code).model
        _record_gguf_origin(model, source)
    else:
        kwargs["use_safetensors"] = None if allow_pickle else True
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, tokenizer_args=tokenizer_args)
    return LoadedModel(model, tokenizer, source.location, original_dtype)


def _record_gguf_origin(model: PreTrainedModel, source: ModelSource) -> None:
    """What ``from_pretrained`` records in a GGUF-loaded model's config (the saved config.json
    carries it): its directory and, where transformers has a ``GgufConfig``, one naming the file.
    Its quantizer object is not attached: the weights are plain float tensors."""
    model.config._name_or_path = source.directory
    try:
        from transformers import GgufConfig
    except ImportError:  # an older transformers without it: nothing more to record
        return
    model.config.quantization_config = GgufConfig(gguf_file=source.gguf_file)


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
