"""The reference's real outputs on a tiny LLaMA (``shared/fixtures/reference_tiny``) as a test oracle.

For each sample case: run OUR quantizer through ``quant-llama`` with the case's flags on the
fixture's model and calibration files, then compare the output with the reference's tensor by
tensor. Used by ``tests/quant/test_reference_oracle.py`` and ``benchmarks/reference_fidelity.py``.

Tolerances (the fixture's README: the reference is byte-identical on a rerun, a float may move by
1 ulp with another thread count):

- integer tensors (weights, quant_bias) and integer-valued float tensors (offsets): equal, except a
  ±1 on an exact rounding edge,
  allowed in at most ``INT_EDGE_FRACTION`` of a tensor's elements and counted;
- float tensors (scales, norms, float layers) and ``deq_scale`` (float32 bits in int64): within
  ``FLOAT_RTOL`` relative (about 8 ulp of float32), i.e. a few roundings apart.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOAT_RTOL = 1e-6  # ≈ 8 float32 ulp: a few differently ordered float32 sums apart
FLOAT_ATOL = 1e-12  # zeros (norm biases, offsets stored as float)
INT_EDGE_FRACTION = 0.001  # at most 0.1 % of an integer tensor's elements may be off by exactly 1
BIT_PATTERN_SUFFIXES = ("deq_scale",)  # int64 holding float32 bits
INTEGER_VALUED_SUFFIXES = ("offset",)  # float32 tensors holding integers (input/weight/KV offsets)


def shared_root() -> Path:
    """``../shared`` beside the repository, or the parent of ``$QUANT_DATA_DIR`` (as tests/conftest.py)."""
    data = os.environ.get("QUANT_DATA_DIR")
    return Path(data).parent if data else REPO_ROOT.parent / "shared"


def fixture_root() -> Path:
    return shared_root() / "fixtures" / "reference_tiny"


def manifest(root: Path | None = None) -> dict[str, Any]:
    root = root or fixture_root()
    return json.loads((root / "out" / "manifest.json").read_text(encoding="utf-8"))


def case_names(root: Path | None = None) -> list[str]:
    """Every case directory under ``out/`` (each has a CMD.txt), sorted."""
    root = root or fixture_root()
    return sorted(p.name for p in (root / "out").iterdir() if (p / "CMD.txt").is_file())


def unpack_reference(root: Path, target: Path) -> Path:
    """Extract ``out/safetensors.tar.xz`` (``<case>/<file>``) into ``target``."""
    with tarfile.open(root / "out" / "safetensors.tar.xz", "r:xz") as archive:
        archive.extractall(target, filter="data")
    return target


def case_argv(root: Path, case: str, save_directory: Path) -> list[str]:
    """The case's command line for ``quant-llama``: its args with the fixture's paths filled in."""
    args = [str(root / a) if a.startswith("calib/") else a for a in manifest(root)[case]["args"]]
    common = ["--model_path", str(root / "model"), "--save_directory", str(save_directory), "--device_type", "cpu"]
    return [*common, "--calib_file", str(root / "calib" / "boolq8.jsonl"), *args]


def run_ours(root: Path, case: str, save_directory: Path) -> None:
    """Quantize as a user would: ``quant-llama <the case's flags>`` (in process)."""
    from quant.cli import main

    code = main(case_argv(root, case, save_directory))
    if code != 0:
        raise RuntimeError(f"quant-llama exited with {code} for case {case}")


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the weight file(s) in ``directory``."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("quant_model_weight_*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def load_description(directory: Path) -> dict[str, Any]:
    (path,) = directory.glob("quant_model_description*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def tensor_kind(name: str, description: dict[str, Any]) -> str:
    """``<suffix> (<type>)``, e.g. ``input_scale (W8A8)``, ``weight (FLOAT)``, ``module.bias (W8A8)``."""
    suffix = "module." + name.rsplit(".", 1)[1] if ".module." in name else name.rsplit(".", 1)[1]
    return f"{suffix} ({description.get(name, '?')})"


@dataclass
class TensorDiff:
    """How one tensor of ours compares with the reference's."""

    name: str
    kind: str
    problem: str = ""  # missing / extra / dtype / shape, else ""
    numel: int = 0
    equal: int = 0  # elements equal (integers) or within tolerance (floats)
    off_by_one: int = 0  # integers off by exactly 1
    max_rel_err: float = 0.0  # floats (and deq_scale's float32 values)
    max_abs_diff: float = 0.0  # integers
    integer: bool = False

    @property
    def fraction_equal(self) -> float:
        return self.equal / self.numel if self.numel else 1.0

    @property
    def error_text(self) -> str:
        return f"max |Δ| {self.max_abs_diff:g}" if self.integer else f"max rel err {self.max_rel_err:.3g}"

    @property
    def ok(self) -> bool:
        if self.problem:
            return False
        allowed = math.floor(INT_EDGE_FRACTION * self.numel)
        return self.equal + min(self.off_by_one, allowed) == self.numel


def _as_float(name: str, t: torch.Tensor) -> torch.Tensor:
    if name.endswith(BIT_PATTERN_SUFFIXES) and t.dtype == torch.int64:
        return t.to(torch.int32).view(torch.float32).double()
    return t.double()


def compare_tensor(name: str, kind: str, ours: torch.Tensor, ref: torch.Tensor) -> TensorDiff:
    """Integers element by element (±1 counted), floats within FLOAT_RTOL."""
    diff = TensorDiff(name, kind, numel=ref.numel())
    if ours.dtype != ref.dtype:
        diff.problem = f"dtype {ours.dtype} vs reference {ref.dtype}"
        return diff
    if ours.shape != ref.shape:
        diff.problem = f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
        return diff
    integer_valued = not ref.dtype.is_floating_point or name.endswith(INTEGER_VALUED_SUFFIXES)
    if not integer_valued or name.endswith(BIT_PATTERN_SUFFIXES):
        a, b = _as_float(name, ours), _as_float(name, ref)
        rel = (a - b).abs() / b.abs().clamp(min=1e-30)
        rel = torch.where((a - b).abs() <= FLOAT_ATOL, torch.zeros_like(rel), rel)
        diff.max_rel_err = float(rel.max()) if rel.numel() else 0.0
        diff.equal = int((rel <= FLOAT_RTOL).sum())
    else:
        diff.integer = True
        delta = (ours.double() - ref.double()).abs()
        diff.max_abs_diff = float(delta.max()) if delta.numel() else 0.0
        diff.equal = int((delta == 0).sum())
        diff.off_by_one = int((delta == 1).sum())
    return diff


@dataclass
class CaseDiff:
    """Every difference between our output and the reference's for one case."""

    case: str
    tensors: list[TensorDiff] = field(default_factory=list)
    description: list[str] = field(default_factory=list)  # entries that differ
    order: list[str] = field(default_factory=list)  # description key order differences
    config: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors) and not (self.description or self.order or self.config)

    @property
    def off_by_one(self) -> int:
        return sum(t.off_by_one for t in self.tensors)

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Per tensor kind: tensors, fraction of elements equal, max relative error, ±1 count."""
        kinds: dict[str, dict[str, float]] = {}
        for t in self.tensors:
            if t.problem:
                continue
            k = kinds.setdefault(
                t.kind,
                {"tensors": 0, "numel": 0, "equal": 0, "off_by_one": 0, "max_rel_err": 0.0, "max_abs_diff": 0.0},
            )
            k["integer"] = t.integer
            k["tensors"] += 1
            k["numel"] += t.numel
            k["equal"] += t.equal
            k["off_by_one"] += t.off_by_one
            k["max_rel_err"] = max(k["max_rel_err"], t.max_rel_err)
            k["max_abs_diff"] = max(k["max_abs_diff"], t.max_abs_diff)
        for k in kinds.values():
            k["fraction_equal"] = k["equal"] / k["numel"] if k["numel"] else 1.0
        return kinds

    def report(self, only_failures: bool = True) -> str:
        """A readable table: one line per tensor (failing ones only by default), then per kind."""
        lines = [f"case {self.case}: {'MATCH' if self.ok else 'DIFFERS'}"]
        for t in self.tensors:
            if only_failures and t.ok:
                continue
            if t.problem:
                lines.append(f"  {t.name:<48} {t.kind:<28} {t.problem}")
            else:
                lines.append(
                    f"  {t.name:<48} {t.kind:<28} equal {t.fraction_equal:7.2%}  ±1 {t.off_by_one:>5}  {t.error_text}"
                )
        lines += [f"  description: {d}" for d in self.description]
        lines += [f"  order: {d}" for d in self.order]
        lines += [f"  config.json: {d}" for d in self.config]
        lines.append("  per kind:")
        for kind, k in sorted(self.by_kind().items()):
            error = f"max |Δ| {k['max_abs_diff']:g}" if k["integer"] else f"max rel err {k['max_rel_err']:.3g}"
            lines.append(
                f"    {kind:<36} {int(k['tensors']):>3} tensors  equal {k['fraction_equal']:8.4%}  "
                f"±1 {int(k['off_by_one']):>5}  {error}"
            )
        return "\n".join(lines)


def _compare_description(ours: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    problems = []
    for key in sorted(set(ours) | set(ref)):
        if key not in ours:
            problems.append(f"{key}: missing (reference {ref[key]!r})")
        elif key not in ref:
            problems.append(f"{key}: extra ({ours[key]!r})")
        elif ours[key] != ref[key]:
            problems.append(f"{key}: {ours[key]!r} vs reference {ref[key]!r}")
    return problems


def _compare_config(ours_dir: Path, ref_case_dir: Path) -> list[str]:
    """config.json keys that matter to a loader: the model's config values and the MindIE additions."""
    ours = json.loads((ours_dir / "config.json").read_text(encoding="utf-8"))
    ref = json.loads((ref_case_dir / "config.json").read_text(encoding="utf-8"))
    skip = {"transformers_version", "torch_dtype", "dtype", "use_cache"}  # writer's version and dtype key spelling
    problems = []
    for key in sorted(set(ref) - skip):
        if key not in ours:
            problems.append(f"{key}: missing (reference {ref[key]!r})")
        elif ours[key] != ref[key]:
            problems.append(f"{key}: {ours[key]!r} vs reference {ref[key]!r}")
    dtype = ours.get("torch_dtype", ours.get("dtype"))
    if dtype != ref["torch_dtype"]:
        problems.append(f"torch_dtype: {dtype!r} vs reference {ref['torch_dtype']!r}")
    return problems


def _compare_order(ours: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """The first place where the description's keys (those in both) come in another order."""
    common = set(ours) & set(ref)
    a, b = [k for k in ours if k in common], [k for k in ref if k in common]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return [f"key {i}: {x} where the reference has {y}"]
    return []


def compare_case(case: str, ours_dir: Path, ref_dir: Path, ref_case_dir: Path) -> CaseDiff:
    """Compare our output directory with the reference's tensors (``ref_dir``) and files (``ref_case_dir``)."""
    ours, ref = load_tensors(ours_dir), load_tensors(ref_dir)
    ours_desc, ref_desc = load_description(ours_dir), load_description(ref_case_dir)
    diff = CaseDiff(case)
    for name in ref:
        kind = tensor_kind(name, ref_desc)
        if name not in ours:
            diff.tensors.append(TensorDiff(name, kind, problem="missing", numel=ref[name].numel()))
        else:
            diff.tensors.append(compare_tensor(name, kind, ours[name], ref[name]))
    for name in ours:
        if name not in ref:
            diff.tensors.append(TensorDiff(name, tensor_kind(name, ours_desc), problem="extra"))
    diff.description = _compare_description(ours_desc, ref_desc)
    diff.order = _compare_order(ours_desc, ref_desc)
    diff.config = _compare_config(ours_dir, ref_case_dir)
    return diff
