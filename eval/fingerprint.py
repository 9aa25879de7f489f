"""Content digests of model tensors and saved weight files: they prove that the model a sweep
evaluated is the one it saved."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from eval.data import sha256_json
from quant.reload import find_description, iter_saved_tensors


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of one tensor's dtype, shape and raw bytes (on CPU, contiguous)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(flat.view(torch.uint8).numpy())  # bytes of any dtype, bfloat16 included
    return digest.hexdigest()


def tensor_digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{name: tensor_sha256}`` for every tensor."""
    return {name: tensor_sha256(t) for name, t in tensors.items()}


def combine_digests(digests: Mapping[str, str]) -> str:
    """One SHA-256 for a set of named digests, independent of their order."""
    return sha256_json(sorted(digests.items()))


@dataclass(frozen=True)
class SavedWeightsCheck:
    """The evaluated model's state-dict digest equals the digest of the tensors read back from disk."""

    model_sha256: str
    saved_sha256: str
    n_tensors: int

    def to_tags(self, prefix: str = "eval_") -> dict[str, str]:
        """Tags for experiment tracking."""
        return {
            f"{prefix}state_sha256": self.model_sha256,
            f"{prefix}saved_tensors_sha256": self.saved_sha256,
            f"{prefix}matches_saved": str(self.model_sha256 == self.saved_sha256).lower(),
        }


def check_model_matches_saved(model: torch.nn.Module, directory: str | Path) -> SavedWeightsCheck:
    """Prove that ``model``'s state dict is exactly the saved weight file(s) in ``directory``.

    Compares name sets and each tensor's dtype, shape and bytes; raises RuntimeError naming the
    first differences otherwise.
    """
    directory = Path(directory)
    quant_type = json.loads(find_description(directory).read_text())["model_quant_type"]
    saved = {name: tensor_sha256(tensor) for name, tensor in iter_saved_tensors(directory, quant_type)}
    live = tensor_digests(model.state_dict())
    if saved != live:
        missing = sorted(saved.keys() - live.keys())[:5]
        extra = sorted(live.keys() - saved.keys())[:5]
        changed = sorted(k for k in saved.keys() & live.keys() if saved[k] != live[k])[:5]
        raise RuntimeError(
            f"the evaluated model differs from the weights saved in {directory}: "
            f"only saved {missing}, only in the model {extra}, different {changed}"
        )
    return SavedWeightsCheck(combine_digests(live), combine_digests(saved), len(saved))
