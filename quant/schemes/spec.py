"""What one linear's scheme needs to know, derived once from the recipe (QuantConfig).

The mapping from the reference's flags to weight granularity lives here and nowhere else:

* per group: ``is_lowbit=True, open_outlier=False`` (``group_size`` inputs share a range);
* outlier protection: W8A8S (``co_sparse``, or ``is_lowbit`` with w_bit 4 / a_bit 8), and
  ``is_lowbit`` with ``open_outlier=True`` at a_bit 16 (W4A16): 4-bit range from the inliers,
  outliers (``fraction`` of the weights, or beyond ``sigma_factor`` std with ``use_sigma``)
  kept up to int8;
* per tensor: ``mm_tensor=True``; otherwise per output channel (the reference's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from quant.arch import is_row_parallel
from quant.quant_types import TP_SHARDED_TYPES, QuantType
from quant.quantizers import (
    QuantizedWeight,
    outlier_mask_by_fraction,
    outlier_mask_by_sigma,
    quantize_weight,
    quantize_weight_outlier_protected,
)

if TYPE_CHECKING:
    from quant.config import QuantConfig


@dataclass(frozen=True)
class LinearSpec:
    """The scheme settings of one linear layer."""

    quant_type: QuantType
    w_bit: int = 8
    symmetric: bool = True
    per_tensor: bool = False
    group_size: int | None = None
    outlier_fraction: float | None = None
    outlier_sigma: float | None = None
    act_shards: int = 1  # tp_size for row-parallel layers of TP_SHARDED_TYPES, else 1
    row_parallel: bool = False  # o_proj / down_proj: their input is split under tensor parallelism

    @property
    def outlier_protected(self) -> bool:
        return self.outlier_fraction is not None or self.outlier_sigma is not None

    def quantize_weight(self, weight: torch.Tensor) -> QuantizedWeight:
        """The weight quantizer this spec names (per channel / group / tensor, outlier-protected)."""
        if self.outlier_protected:
            if self.outlier_sigma is not None:
                outliers = outlier_mask_by_sigma(weight, self.outlier_sigma)
            else:
                outliers = outlier_mask_by_fraction(weight, self.outlier_fraction)
            return quantize_weight_outlier_protected(weight, outliers, bits=self.w_bit, symmetric=self.symmetric)
        return quantize_weight(
            weight, bits=self.w_bit, symmetric=self.symmetric, group_size=self.group_size, per_tensor=self.per_tensor
        )


def is_per_group(cfg: QuantConfig) -> bool:
    """The reference's per-group mode: ``is_lowbit=True`` with ``open_outlier=False``."""
    return cfg.is_lowbit and not cfg.open_outlier


def is_outlier_protected(cfg: QuantConfig) -> bool:
    """W8A8S, or low-bit weights with ``open_outlier=True``."""
    return cfg.quant_type == QuantType.W8A8S or (cfg.is_lowbit and cfg.open_outlier)


def linear_spec(cfg: QuantConfig, name: str) -> LinearSpec:
    """The settings of linear ``name`` under recipe ``cfg`` (validated by QuantConfig)."""
    qtype = cfg.quant_type
    protected = is_outlier_protected(cfg)
    return LinearSpec(
        quant_type=qtype,
        w_bit=cfg.w_bit,
        symmetric=cfg.w_sym,
        per_tensor=cfg.mm_tensor,
        group_size=cfg.group_size if is_per_group(cfg) else None,
        outlier_fraction=cfg.fraction if protected and not cfg.use_sigma else None,
        outlier_sigma=cfg.sigma_factor if protected and cfg.use_sigma else None,
        act_shards=cfg.tp_size if qtype in TP_SHARDED_TYPES and is_row_parallel(name) else 1,
        row_parallel=is_row_parallel(name),
    )
