"""The float model's observed input statistics as a disk cache entry.

``quant.pipeline.observe_float_model`` runs the whole calibration set through the float model;
its result depends only on the model, the token batches and the observed linears, never on the
recipe's anti-outlier method, act_method or disable_level, so one entry serves a whole grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from quant.calib import Batch
from quant.observe import InputStats

STATS_FILE = "input_stats.pt"
_TENSOR_FIELDS = ("amax", "cmax", "cmin")


def batches_digest(batches: Sequence[Batch]) -> str:
    """Hash of the token batches exactly as the model sees them (keys, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            tensor = batch[name].detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def observation_key_parts(
    model_fingerprint: str, model_dtype: torch.dtype, device: str, batches: Sequence[Batch], names: Sequence[str]
) -> list[Any]:
    """What the statistics depend on: model content and dtype, device, input tokens, observed linears."""
    return ["observation", model_fingerprint, str(model_dtype), device, batches_digest(batches), list(names)]


def write_stats(directory: Path, stats: dict[str, InputStats]) -> None:
    """Save ``stats``; linears sharing one input (q/k/v) share one record, as in memory."""
    records: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    position: dict[int, int] = {}  # id(InputStats) -> its record
    for name, stat in stats.items():
        if id(stat) not in position:
            position[id(stat)] = len(records)
            record = dataclasses.asdict(stat)
            for key in _TENSOR_FIELDS:
                if record[key] is not None:
                    record[key] = record[key].detach().to("cpu")
            records.append(record)
        index[name] = position[id(stat)]
    torch.save({"index": index, "records": records}, directory / STATS_FILE)


def read_stats(directory: Path, device: torch.device | str = "cpu") -> dict[str, InputStats]:
    """Load what :func:`write_stats` saved (tensors on ``device``; shared records shared again)."""
    payload = torch.load(directory / STATS_FILE, map_location="cpu", weights_only=True)
    shared: list[InputStats] = []
    for record in payload["records"]:
        for key in _TENSOR_FIELDS:
            if record[key] is not None:
                record[key] = record[key].to(device)
        shared.append(InputStats(**record))
    return {name: shared[i] for name, i in payload["index"].items()}
