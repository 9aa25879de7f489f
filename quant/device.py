"""Device selection: cpu and cuda through torch, Ascend npu through torch_npu when it imports."""

from __future__ import annotations

import importlib

import torch

from quant.errors import QuantInputError


def resolve_device(device_type: str) -> torch.device:
    """The torch device for ``device_type``; a clear error when that backend is not available."""
    if device_type == "cpu":
        return torch.device("cpu")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise QuantInputError("device_type", "cuda was asked but torch sees no CUDA device; valid here: cpu")
        return torch.device("cuda")
    if device_type == "npu":
        try:
            importlib.import_module("torch_npu")
        except ImportError:
            raise QuantInputError(
                "device_type", "npu needs the torch_npu package (pip install '.[npu]'); valid here: cpu"
            ) from None
        return torch.device("npu")
    raise QuantInputError("device_type", f"invalid value {device_type!r}; valid values: cpu, cuda, npu")
