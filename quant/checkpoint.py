"""Reading a float checkpoint one module at a time, into a model skeleton whose weights start on ``meta``.

:func:`open_checkpoint` gives a :class:`CheckpointReader` for a model source: sharded or single
safetensors files are memory-mapped and read tensor by tensor; a GGUF file is memory-mapped too and
each tensor is dequantized (and un-permuted, as transformers does) only when asked for. With
:func:`empty_model` (parameters on ``meta``, buffers such as RoPE's real) and :func:`load_module` /
:func:`release_module`, a caller holds only the modules it is working on: the whole float model is
never in memory at once. The values are those :func:`quant.model_io.load_model` gives, bit for bit.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from quant.device import resolve_device
from quant.model_io import checkpoint_dtype, load_config
from quant.model_source import ModelSource, resolve_model_source

SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointReader(Protocol):
    """Named float tensors of a checkpoint, read one at a time."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> torch.Tensor: ...


@dataclass
class SafetensorsReader:
    """The tensors of a directory's safetensors files (an index's shards or every ``*.safetensors``)."""

    directory: Path
    _file_of: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from safetensors import safe_open

        index = self.directory / SAFETENSORS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self._file_of = {name: self.directory / file for name, file in weight_map.items()}
            return
        for path in sorted(self.directory.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                self._file_of.update(dict.fromkeys(handle.keys(), path))

    def names(self) -> list[str]:
        return list(self._file_of)

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        # Opened per read: the file's mapping (whose touched pages count as resident) ends with it.
        with safe_open(str(self._file_of[name]), framework="pt") as handle:
            return handle.get_tensor(name)


@dataclass
class GGUFTensorReader:
    """The tensors of a GGUF file under transformers' names, each dequantized when read."""

    path: Path
    skeleton: PreTrainedModel
    _tensors: dict[str, Any] = field(default_factory=dict)  # HF name -> gguf ReaderTensor
    _processor: Any = None

    def __post_init__(self) -> None:
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
        )

        reader = GGUFReader(str(self.path))  # memory-maps the file
        architecture = reader.fields["general.architecture"].contents()
        config = load_gguf_checkpoint(str(self.path), return_tensors=False)["config"]
        self._processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
        hf_name_of = get_gguf_hf_weights_map(self.skeleton, self._processor)
        self._tensors = {hf_name_of[t.name]: t for t in reader.tensors if t.name in hf_name_of}

    def names(self) -> list[str]:
        return list(self._tensors)

    def read(self, name: str) -> torch.Tensor:
        import numpy as np
        from gguf import dequantize

        tensor = self._tensors[name]
        weights = dequantize(tensor.data, tensor.tensor_type)
        weights = self._processor.process(weights=weights, name=tensor.name).weights
        return torch.from_numpy(np.copy(weights))


def empty_model(config: Any, dtype: torch.dtype) -> PreTrainedModel:
    """The model's modules with every parameter on ``meta`` (no memory) and its buffers real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def open_checkpoint(source: ModelSource, skeleton: PreTrainedModel) -> CheckpointReader:
    """The reader for ``source`` (an HF directory with safetensors, or a GGUF file)."""
    if source.kind == "gguf":
        return GGUFTensorReader(Path(source.location), skeleton)
    if source.kind == "hf_dir":
        return SafetensorsReader(Path(source.location))
    raise ValueError(f"layer-by-layer reading needs a local checkpoint, not a {source.kind} source")


@dataclass
class StreamedModel:
    """A model skeleton and the reader that fills it module by module."""

    model: PreTrainedModel
    reader: CheckpointReader
    dtype: torch.dtype  # the dtype modules are read in
    original_dtype: torch.dtype  # the checkpoint's own dtype

    blank: PreTrainedModel | None = None  # a second skeleton: fresh modules for :meth:`reset`

    def load(self, prefix: str, device: torch.device | str = "cpu") -> nn.Module:
        """Read the submodule ``prefix`` from the checkpoint (see :func:`load_module`)."""
        return load_module(self.model, prefix, self.reader, self.dtype, device)

    def place_buffers(self, device: torch.device | str) -> None:
        """Move the skeleton's real buffers (RoPE's tables) to the execution device."""
        for owner in self.model.modules():
            for leaf, buffer in list(owner._buffers.items()):
                if buffer is not None and not buffer.is_meta:
                    owner._buffers[leaf] = buffer.to(device)

    def reset(self, prefix: str) -> nn.Module:
        """Replace the submodule ``prefix`` by a fresh empty one, as the skeleton first had it: whatever
        was changed on it (added biases, hooks, replaced linears) is gone and its memory freed."""
        fresh = copy.deepcopy(self.blank.get_submodule(prefix))
        parent, _, leaf = prefix.rpartition(".")
        self.model.get_submodule(parent).register_module(leaf, fresh)
        return fresh


def open_model(model_path: str, device_type: str = "cpu", trust_remote_code: bool = False) -> StreamedModel:
    """An empty skeleton of the model at ``model_path`` and its reader. Modules are read in the dtype
    :func:`quant.model_io.load_model` gives: float32 on CPU, the checkpoint's own on an accelerator."""
    source = resolve_model_source(model_path)
    config = load_config(source, trust_remote_code)
    original_dtype = checkpoint_dtype(config)  # before the skeleton's dtype overwrites the config's
    dtype = torch.float32 if device_type == "cpu" else original_dtype
    skeleton = empty_model(config, dtype)
    blank = empty_model(config, dtype)
    return StreamedModel(skeleton, open_checkpoint(source, skeleton), dtype, original_dtype, blank)


def tied_source(model: PreTrainedModel, name: str) -> str:
    """The checkpoint name holding ``name``: a tied lm_head reads the embedding table."""
    if name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
        return "model.embed_tokens.weight"
    return name


def load_module(
    model: PreTrainedModel,
    prefix: str,
    reader: CheckpointReader,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Read the parameters of the submodule ``prefix`` (e.g. ``model.layers.3``; "" for the whole
    model) into it; return it.

    Each tensor is read, cast to ``dtype`` and moved to ``device`` alone, replacing the ``meta``
    parameter (ties between modules are not kept: each module gets its own tensors; a parameter
    tied within ``prefix`` is read once, under its first name).
    """
    module = model.get_submodule(prefix)
    for name, param in list(module.named_parameters(recurse=True)):
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        full = f"{prefix}.{name}" if prefix else name
        # copy=True: a safetensors tensor may alias the file's mapping, which in-place transforms would change
        value = reader.read(tied_source(model, full)).to(device=device, dtype=dtype, copy=True)
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=param.requires_grad)
    return module


def read_whole_model(model_path: str, device_type: str = "cpu", trust_remote_code: bool = False) -> StreamedModel:
    """The whole float model read tensor by tensor into its skeleton, tied weights tied again: the
    values of ``from_pretrained``, without the fully dequantized copy of the checkpoint it holds
    beside the model while loading a GGUF file (the load's peak then is the model plus one tensor)."""
    streamed = open_model(model_path, device_type, trust_remote_code)
    model = streamed.model
    # The skeleton's tied lm_head shares the embedding's parameter, so it is read once, into the
    # embedding only; tie_weights points lm_head at the loaded table again.
    load_module(model, "", streamed.reader, streamed.dtype, resolve_device(device_type))
    model.tie_weights()
    streamed.blank = None
    return streamed


def release_module(module: nn.Module) -> None:
    """Put every parameter and buffer of ``module`` back on ``meta``, freeing its memory."""
    for owner in module.modules():
        for leaf, param in list(owner._parameters.items()):
            if param is not None:
                owner._parameters[leaf] = nn.Parameter(param.to("meta"), requires_grad=False)
        for leaf, buffer in list(owner._buffers.items()):
            if buffer is not None and leaf not in owner._non_persistent_buffers_set:
                owner._buffers[leaf] = buffer.to("meta")


def meta_names(module: nn.Module) -> Iterable[str]:
    """Names of the parameters of ``module`` still on ``meta`` (not read yet)."""
    return [n for n, p in module.named_parameters() if p.is_meta]
