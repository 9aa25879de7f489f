"""The one validated configuration object: every parameter of the reference's quant_llama.py.

Both front doors (the ``quant-llama`` CLI and the Hydra app) build a :class:`QuantConfig`;
validation happens in ``__post_init__`` so that no model is loaded for a bad config.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from quant.errors import QuantInputError, invalid_value
from quant.quant_types import TP_SHARDED_TYPES, QuantType

MODEL_TYPES = ("llama", "llama2", "llama3", "llama3.1_instruct", "llama3.1_fp")
ANTI_METHODS = ("none", "m1", "m2", "m3", "m4", "m5", "m6")
ACT_METHODS = (1, 2, 3)
DEVICE_TYPES = ("cpu", "cuda", "npu")
TP_SIZES = (1, 2, 4, 8, 16)
GROUP_SIZES = (32, 64, 128, 256)
W_BITS = (4, 8, 16)
A_BITS = (8, 16)
DEFAULT_INPUT_IDS_NAME = "input_ids"
DEFAULT_ATTENTION_MASK_NAME = "attention_mask"
_LEVEL_RE = re.compile(r"^L(\d+)$")
log = logging.getLogger(__name__)


@dataclass
class QuantConfig:
    """A quantization recipe: the reference's parameters, same names, defaults and values.

    ``anti_params`` (not in the reference) carries the tunable constants of the chosen
    anti-outlier method (e.g. SmoothQuant's ``alpha``); empty means the reference's defaults.

    One deliberate difference: ``mm_tensor`` defaults to False. The reference lists True but
    ignores the flag (its weights are always per channel); here True means per-tensor weights,
    so the default False reproduces the reference's per-channel output.
    """

    model_path: str = ""
    save_directory: str = ""
    part_file_size: float | None = None
    calib_texts: list[str] | None = None
    calib_file: str | None = None
    w_bit: int = 8
    a_bit: int = 8
    disable_names: list[str] | None = None
    device_type: str = "cpu"
    fraction: float = 0.01
    act_method: int = 1
    co_sparse: bool = False
    anti_method: str = "none"
    disable_level: str = "L0"
    do_smooth: bool = False
    use_sigma: bool = False
    use_reduce_quant: bool = False
    tp_size: int = 1
    sigma_factor: float = 3.0
    is_lowbit: bool = False
    mm_tensor: bool = False
    w_sym: bool = True
    use_kvcache_quant: bool = False
    use_fa_quant: bool = False
    fa_amp: int = 0
    is_dynamic: bool = False
    input_ids_name: str = DEFAULT_INPUT_IDS_NAME
    attention_mask_name: str = DEFAULT_ATTENTION_MASK_NAME
    tokenizer_args: dict[str, Any] | None = None
    disable_last_linear: bool = True
    model_name: str | None = None
    model_type: str = "llama2"
    anti_calib_file: str | None = None
    trust_remote_code: bool = False
    open_outlier: bool = True
    group_size: int = 64
    pdmix: bool = False
    disable_threshold: float = 0.0
    mindie_format: bool = False
    # Harness extensions (not reference parameters).
    anti_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate_types()
        self._validate_values()
        self._apply_reference_overrides()
        self._validate_combinations()
        self._validate_scheme()

    # -- validation ---------------------------------------------------------------------

    def _validate_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise invalid_value(f.name, value, "True, False")

    def _validate_values(self) -> None:
        _check_choice("w_bit", self.w_bit, W_BITS)
        _check_choice("a_bit", self.a_bit, A_BITS)
        _check_choice("act_method", self.act_method, ACT_METHODS)
        _check_choice("anti_method", self.anti_method, ANTI_METHODS)
        _check_choice("device_type", self.device_type, DEVICE_TYPES)
        _check_choice("tp_size", self.tp_size, TP_SIZES)
        _check_choice("group_size", self.group_size, GROUP_SIZES)
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        if not isinstance(self.disable_level, str) or not _LEVEL_RE.match(self.disable_level):
            raise invalid_value("disable_level", self.disable_level, "L<n> with n >= 0 (L0, L1, L5, ...)")
        _check_range("fraction", self.fraction, 0.01, 0.1)
        _check_range("sigma_factor", self.sigma_factor, 1.0, 3.0)
        if not isinstance(self.fa_amp, int) or isinstance(self.fa_amp, bool) or self.fa_amp < 0:
            raise invalid_value("fa_amp", self.fa_amp, "an integer >= 0")
        if not _is_number(self.disable_threshold) or self.disable_threshold < 0:
            raise invalid_value("disable_threshold", self.disable_threshold, "a number >= 0")
        if self.part_file_size is not None and (not _is_number(self.part_file_size) or self.part_file_size <= 0):
            raise invalid_value("part_file_size", self.part_file_size, "a number of GB > 0")
        if self.disable_names is not None and (
            not isinstance(self.disable_names, list) or not all(isinstance(n, str) for n in self.disable_names)
        ):
            raise invalid_value("disable_names", self.disable_names, "a list of module names")
        if self.calib_texts is not None and (
            not isinstance(self.calib_texts, list) or not all(isinstance(t, str) for t in self.calib_texts)
        ):
            raise invalid_value("calib_texts", self.calib_texts, "a list of strings")
        if self.tokenizer_args is not None and not isinstance(self.tokenizer_args, dict):
            raise invalid_value("tokenizer_args", self.tokenizer_args, "a dict, e.g. {'padding_side': 'left'}")
        if self.anti_calib_file is not None and not str(self.anti_calib_file).endswith((".json", ".jsonl")):
            raise invalid_value("anti_calib_file", self.anti_calib_file, "a .json or .jsonl file")
        if not isinstance(self.anti_params, dict):
            raise invalid_value("anti_params", self.anti_params, "a dict of the anti-outlier method's settings")

    def _apply_reference_overrides(self) -> None:
        """co_sparse forces w_bit 4 and a_bit 8, as the reference does (with a warning)."""
        if self.co_sparse and (self.w_bit, self.a_bit) != (4, 8):
            log.warning("co_sparse True runs W8A8S: w_bit %s -> 4, a_bit %s -> 8", self.w_bit, self.a_bit)
            self.w_bit, self.a_bit = 4, 8

    def _validate_combinations(self) -> None:
        if self.w_bit == 16 and self.a_bit != 16:
            raise QuantInputError("w_bit", "16 means no quantization; valid with a_bit 16 only")
        if self.use_fa_quant and self.use_kvcache_quant:
            raise QuantInputError(
                "use_fa_quant",
                "True cannot be combined with use_kvcache_quant True (attention quantization already quantizes "
                "K and V); set one of the two to False",
            )
        if self.fa_amp > 0 and not self.use_fa_quant:
            raise QuantInputError(
                "fa_amp", f"{self.fa_amp} keeps attention layers in float, so it needs use_fa_quant True; else use 0"
            )

    def _validate_scheme(self) -> None:
        """The weight/activation flags must name one scheme of the reference (SPEC §4)."""
        from quant.schemes.spec import is_outlier_protected, is_per_group  # the granularity rules; imports this

        per_group = is_per_group(self)
        if self.is_lowbit and self.w_bit not in (4, 8):
            raise QuantInputError("is_lowbit", f"True needs w_bit 4 or 8, got {self.w_bit}")
        if self.w_bit == 4 and not (self.is_lowbit or self.co_sparse or self.is_dynamic):
            raise QuantInputError(
                "w_bit",
                "4 needs a low-bit mode: is_lowbit True (open_outlier False: per group; True: outlier "
                "protection) or co_sparse True",
            )
        if self.is_dynamic and self.a_bit != 8:
            raise QuantInputError("is_dynamic", f"True (per-token activations) needs a_bit 8, got {self.a_bit}")
        if self.co_sparse and (self.is_dynamic or per_group):
            other = "is_dynamic True" if self.is_dynamic else "per-group weights (is_lowbit True, open_outlier False)"
            raise QuantInputError("co_sparse", f"True (W8A8S, static activations) cannot be combined with {other}")
        if (self.w_bit, self.a_bit) == (4, 8) and self._base_quant_type() != QuantType.W8A8S:
            self._require_w4a8_dynamic(per_group)
        if per_group and self.a_bit == 8 and self.w_bit != 4:
            raise QuantInputError(
                "open_outlier",
                "False (per-group weights) with a_bit 8 exists only as W4A8_DYNAMIC (w_bit 4, is_dynamic True); "
                "with w_bit 8 use a_bit 16 (W8A16 per group)",
            )
        if not self.w_sym and self.a_bit == 8:
            raise QuantInputError(
                "w_sym", "False (asymmetric weights) needs a_bit 16 (W8A16, W4A16); the a_bit 8 schemes are symmetric"
            )
        if self.mm_tensor and (per_group or is_outlier_protected(self) or self.w_bit == 4):
            raise QuantInputError(
                "mm_tensor",
                "True (per-tensor weights) applies to the per-channel schemes W8A8, W8A16, W8A8_DYNAMIC, W8A8_MIX; "
                "not to per-group, outlier-protected or 4-bit weights",
            )
        if self.pdmix and self._base_quant_type() != QuantType.W8A8:
            raise QuantInputError("pdmix", f"True needs static W8A8; the other flags give {self._base_quant_type()}")
        if self.is_lowbit and self.act_method == 3:
            raise QuantInputError("act_method", "3 (auto-mix) cannot be used with is_lowbit True; valid: 1, 2")
        if self.use_sigma and not is_outlier_protected(self):
            raise QuantInputError(
                "use_sigma",
                "True picks the protected outlier range of outlier-protected weights; needs co_sparse True, or "
                "is_lowbit True with open_outlier True",
            )
        if self.do_smooth and (self._base_quant_type() != QuantType.W8A8S or self.anti_method != "none"):
            raise QuantInputError(
                "do_smooth",
                "True smooths the sparse path (W8A8S: co_sparse True, or is_lowbit True with w_bit 4, a_bit 8) "
                "with SmoothQuant alpha 0.5 and needs anti_method none",
            )
        if self.tp_size > 1 and self.quant_type not in TP_SHARDED_TYPES:
            raise QuantInputError(
                "tp_size",
                f"{self.tp_size} gives row-parallel layers per-shard activation parameters; it needs one of "
                f"{', '.join(TP_SHARDED_TYPES)}, these flags give {self.quant_type}",
            )

    def _require_w4a8_dynamic(self, per_group: bool) -> None:
        """w_bit 4 with a_bit 8 outside the sparse path is W4A8_DYNAMIC: per group, dynamic, symmetric."""
        missing = [
            (param, text)
            for param, text, ok in (
                ("open_outlier", "per-group weights (is_lowbit True, open_outlier False)", per_group),
                ("is_dynamic", "is_dynamic True", self.is_dynamic),
                ("w_sym", "symmetric weights (w_sym True)", self.w_sym),
            )
            if not ok
        ]
        if missing:
            raise QuantInputError(
                missing[0][0],
                "W4A8_DYNAMIC (w_bit 4, a_bit 8) needs per-group weights, is_dynamic True and w_sym True; missing: "
                + "; ".join(text for _, text in missing),
            )

    def check_supported(self) -> None:
        """Raise for the reference combination this version does not implement (automatic precision
        tuning) and for anti-outlier settings the method does not know."""
        if self.is_lowbit and self.w_bit == 8 and self.open_outlier:
            raise QuantInputError(
                "is_lowbit",
                "True with w_bit 8 and open_outlier True runs the reference's automatic precision tuning, which is "
                "not implemented; use open_outlier False (per group) or w_bit 4",
            )
        from quant.anti_outlier import check_anti_params  # torch-heavy; only once a run is asked for

        check_anti_params(self.anti_method, self.anti_params)

    # -- derived values -----------------------------------------------------------------

    @property
    def disable_level_count(self) -> int:
        """n of ``disable_level`` ``Ln``: how many linears to roll back to float by range."""
        match = _LEVEL_RE.match(self.disable_level)
        assert match is not None  # validated in __post_init__
        return int(match.group(1))

    @property
    def quant_type(self) -> QuantType:
        """The reference's model_quant_type for this recipe (SPEC §7)."""
        base = self._base_quant_type()
        return QuantType.W8A8_MIX if self.pdmix and base == QuantType.W8A8 else base

    def _base_quant_type(self) -> QuantType:
        """The type the weight/activation flags give, before PDMix (the reference's precedence)."""
        if self.w_bit == 16:
            return QuantType.FLOAT
        if self.is_dynamic:
            return QuantType.W4A8_DYNAMIC if self.w_bit == 4 else QuantType.W8A8_DYNAMIC
        if self.co_sparse or (self.is_lowbit and (self.w_bit, self.a_bit) == (4, 8) and self.open_outlier):
            return QuantType.W8A8S
        if self.a_bit == 16:
            return QuantType.W8A16 if self.w_bit == 8 else QuantType.W4A16
        return QuantType.W8A8

    @property
    def quantizes_activations(self) -> bool:
        return self.a_bit == 8

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-serialisable) for logging and for the saved output."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantConfig:
        """Build from a mapping, rejecting unknown keys with the list of valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise QuantInputError(unknown[0], f"unknown parameter; valid parameters: {', '.join(sorted(names))}")
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_choice(param: str, value: object, valid: tuple) -> None:
    if isinstance(value, bool) or value not in valid:
        raise invalid_value(param, value, valid)


def _check_range(param: str, value: object, low: float, high: float) -> None:
    if not _is_number(value) or not low <= value <= high:
        raise invalid_value(param, value, f"a number in [{low}, {high}]")
