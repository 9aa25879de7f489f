"""``python -m sweep.regress``: does a recipe keep the accuracy of the shipped one? Usable in CI.

The candidate is a finished run (``--run ID``: its logged BoolQ result) or a saved quantized
model (``--model DIR`` or an MLflow URI such as ``models:/llama-quant/3``: reloaded from its files
and evaluated on exactly the baseline's BoolQ rows). The baseline is the registered ``champion``
(default), another run (``--against RUN_ID``) or a stored result file (``--against FILE.json``,
as written by ``eval.boolq.write_per_example``). The two are compared row by row.

Exit codes: 0 no regression, 1 accuracy dropped beyond ``max_drop`` (or is significantly worse,
with ``mcnemar_alpha``), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from eval.boolq import BoolQResult, evaluate_boolq, load_boolq_result
from eval.compare import BoolQComparison, compare_boolq
from quant.errors import QuantInputError
from quant.reload import load_quantized
from sweep.compose import compose_tool_config
from sweep.job import BOOLQ_RESULT_ARTIFACT
from sweep.runs import resolve_run_id
from sweep.tracking import open_existing_experiment

EXIT_REGRESSION = 1
EXIT_BAD_INPUT = 2


@dataclass
class Side:
    """One side of the comparison: what it is, and its BoolQ result."""

    label: str
    result: BoolQResult


def run_result(client: MlflowClient, run_id: str) -> BoolQResult:
    """The BoolQ result a sweep job logged (``eval/boolq_result.json``)."""
    try:
        client.get_run(run_id)
    except MlflowException:
        raise QuantInputError("run", f"no run {run_id!r} in this MLflow store") from None
    with tempfile.TemporaryDirectory(prefix="regress-") as tmp:
        try:
            path = client.download_artifacts(run_id, BOOLQ_RESULT_ARTIFACT, tmp)
        except (MlflowException, OSError):
            raise QuantInputError("run", f"run {run_id} has no {BOOLQ_RESULT_ARTIFACT} artifact") from None
        return load_boolq_result(path)


def champion_run_id(client: MlflowClient, model_name: str, alias: str) -> tuple[str, str]:
    """Run id and version of the registered model's ``alias``."""
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        message = f"registered model {model_name!r} has no alias {alias!r}; promote one with python -m sweep.select"
        raise QuantInputError("against", message) from None
    return version.run_id, str(version.version)


def baseline_side(client: MlflowClient, against: str, cfg: DictConfig) -> Side:
    """``champion``, a run id, or a result file."""
    if against == "champion":
        run_id, version = champion_run_id(client, str(cfg.registry.model_name), str(cfg.registry.alias))
        label = f"{cfg.registry.model_name}@{cfg.registry.alias} (version {version}, run {run_id[:8]})"
        return Side(label, run_result(client, run_id))
    if Path(against).is_file():
        return Side(f"file {against}", load_boolq_result(against))
    return Side(f"run {against[:8]}", run_result(client, against))


def evaluate_like(model_location: str, reference: BoolQResult, device: str) -> BoolQResult:
    """Reload a saved quantized model (directory or MLflow artifact URI) and evaluate it on the
    reference's BoolQ rows with the reference's settings."""
    directory = Path(model_location)
    if not directory.is_dir():
        try:
            directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_location))
        except (MlflowException, OSError) as exc:
            message = f"{model_location} is neither a directory nor an MLflow artifact URI ({exc})"
            raise QuantInputError("model", message) from None
    reloaded = load_quantized(directory, device_type=device)
    settings = reference.config
    if not settings.get("data_path"):
        raise QuantInputError("against", "the baseline records no BoolQ data_path to evaluate the candidate on")
    return evaluate_boolq(
        reloaded.model,
        reloaded.tokenizer,
        data_path=settings["data_path"],
        limit=settings.get("limit"),
        seed=settings.get("seed"),
        batch_size=int(settings.get("batch_size", 8)),
        add_bos_token=bool(settings.get("add_bos_token", True)),
        device=device,
    )


def regressions(comparison: BoolQComparison, max_drop: float, mcnemar_alpha: float | None) -> list[str]:
    """Why the candidate fails (empty: it passes)."""
    reasons = []
    if -comparison.accuracy_delta > max_drop + 1e-12:
        reasons.append(f"accuracy dropped by {-comparison.accuracy_delta:.4f} > max_drop {max_drop}")
    if mcnemar_alpha is not None and comparison.accuracy_delta < 0 and comparison.mcnemar_p < mcnemar_alpha:
        reasons.append(f"significantly worse: McNemar p = {comparison.mcnemar_p:.4f} < {mcnemar_alpha}")
    return reasons


def report(baseline: Side, candidate: Side, comparison: BoolQComparison, reasons: list[str], max_drop: float) -> str:
    c = comparison
    lines = [
        f"regression check on {c.n} BoolQ examples",
        f"  baseline : {baseline.label}: accuracy {c.reference_accuracy:.4f}",
        f"  candidate: {candidate.label}: accuracy {c.candidate_accuracy:.4f}",
        f"  delta {c.accuracy_delta:+.4f} (allowed drop {max_drop}); {c.n_flips} answers changed "
        f"(baseline-only correct {c.n_reference_only}, candidate-only correct {c.n_candidate_only}), "
        f"McNemar p = {c.mcnemar_p:.4f}",
    ]
    lines.append("FAIL: " + "; ".join(reasons) if reasons else "PASS")
    return "\n".join(lines)


def regress(
    cfg: DictConfig, run: str | None, model: str | None, against: str, device: str, json_path: str | None
) -> int:
    """Compare, print the report, write ``json_path`` if given; returns the exit code."""
    max_drop = float(cfg.max_drop)
    if max_drop < 0:
        raise QuantInputError("max_drop", f"invalid value {max_drop}; valid values: a number >= 0")
    alpha = None if cfg.mcnemar_alpha is None else float(cfg.mcnemar_alpha)
    client, experiment_id = open_existing_experiment(cfg.tracking.tracking_uri, cfg.tracking.experiment_name)
    if against != "champion" and not Path(against).is_file():
        against = resolve_run_id(client, experiment_id, against)
    baseline = baseline_side(client, against, cfg)
    if run is not None:
        run = resolve_run_id(client, experiment_id, run)
        candidate = Side(f"run {run[:8]}", run_result(client, run))
    else:
        candidate = Side(f"model {model}", evaluate_like(str(model), baseline.result, device))
    try:
        comparison = compare_boolq(baseline.result, candidate.result)
    except ValueError as exc:
        raise QuantInputError("against", f"baseline and candidate cannot be compared: {exc}") from None
    reasons = regressions(comparison, max_drop, alpha)
    print(report(baseline, candidate, comparison, reasons, max_drop))
    if json_path:
        payload = {"passed": not reasons, "reasons": reasons, "baseline": baseline.label, "candidate": candidate.label}
        payload["comparison"] = asdict(comparison)
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return EXIT_REGRESSION if reasons else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.regress", description=__doc__.split("\n\n")[0])
    candidate = parser.add_mutually_exclusive_group(required=True)
    candidate.add_argument("--run", help="a finished run id: compare its logged BoolQ result")
    candidate.add_argument("--model", help="a saved quantized model directory or MLflow URI: evaluate it")
    parser.add_argument("--against", default="champion", help="champion (default), a run id, or a result JSON file")
    parser.add_argument("--device", default="cpu", help="where --model is evaluated (default cpu)")
    parser.add_argument("--json", dest="json_path", help="also write the verdict and comparison to this file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/regress.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = compose_tool_config("regress", args.overrides)
        return regress(cfg, args.run, args.model, args.against, args.device, args.json_path)
    except QuantInputError as exc:
        print(f"sweep.regress: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
