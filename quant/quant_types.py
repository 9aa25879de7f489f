"""The reference's ``model_quant_type`` values (SPEC §7), as one enum, and the groups the code asks about.

Members are strings (``QuantType.W8A8 == "W8A8"``), so they read and write as the reference's
spelling everywhere: description JSON, file names, MLflow tags. Which flags give which type is
``QuantConfig.quant_type``; which weight granularity a type's flags give is ``quant.schemes.spec``.
"""

from __future__ import annotations

from enum import StrEnum


class QuantType(StrEnum):
    W8A8 = "W8A8"
    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W8A8S = "W8A8S"  # sparse: outlier-protected low-bit weights, static activations
    W8A8_MIX = "W8A8_MIX"  # PDMix
    W8A8_DYNAMIC = "W8A8_DYNAMIC"
    W4A8_DYNAMIC = "W4A8_DYNAMIC"
    FLOAT = "FLOAT"  # w_bit 16, and every linear kept in float


STATIC_ACT_TYPES = (QuantType.W8A8, QuantType.W8A8S, QuantType.W8A8_MIX)
WEIGHT_ONLY_TYPES = (QuantType.W8A16, QuantType.W4A16)
DYNAMIC_TYPES = (QuantType.W8A8_DYNAMIC, QuantType.W4A8_DYNAMIC)
# Schemes whose row-parallel layers get per-shard activation parameters under tp_size > 1.
TP_SHARDED_TYPES = (QuantType.W8A8, QuantType.W8A8S, QuantType.W8A8_MIX, QuantType.W4A8_DYNAMIC)
