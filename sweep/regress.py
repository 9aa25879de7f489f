"""``python -m sweep.regress``: does the shipped recipe still give the shipped quality? Usable in CI.

``--recipe champion`` (or ``models:/<name>/<version>``, or a run id) rebuilds the quantized model
from the recipe logged with that run, with today's code and packages, evaluates it on exactly that
run's BoolQ rows, compares it example by example and compares the saved tensors by sha256 (naming
the tensors that changed and by how much). ``--run ID`` compares a finished run's logged result,
``--model DIR`` (or an MLflow URI such as ``models:/llama-quant/3``) a saved model evaluated on the
baseline's rows; their baseline is the champion (default), a run (``--against RUN_ID``) or a stored
result file (``--against FILE.json``). ``--history`` prints every recorded check per recipe.

The verdict is the paired non-inferiority gate of :mod:`eval.noninferiority` (``margin``,
``alpha``). Every check is recorded as an MLflow run (:mod:`sweep.regress_record`); ``--history``
prints them per recipe and plots them (:mod:`sweep.regress_history`).

Exit codes: 0 pass, 1 regression (the drop exceeds the margin), 2 bad input, 3 cannot decide at
this n.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from eval.boolq import BoolQResult, evaluate_boolq, load_boolq_result
from eval.compare import BoolQComparison, compare_boolq
from eval.noninferiority import FAIL, PASS, Verdict, paired_counts, paired_scores
from eval.tensor_diff import TensorDiff, diff_saved
from quant.errors import QuantInputError, invalid_value
from quant.reload import load_quantized
from sweep.compose import compose_tool_config
from sweep.recipe import (
    Recipe,
    check_inputs_unchanged,
    input_digests,
    load_recipe,
    rebuild,
    recipe_data_files,
    recorded_weights,
    run_result,
)
from sweep.registry import weight_hashes
from sweep.regress_history import history_figure, history_table
from sweep.regress_record import HISTORY_PLOT_ARTIFACT, record_check, record_history, recorded_checks
from sweep.run_records import resolve_run_id
from sweep.store import WorkStore
from sweep.tracking import open_existing_experiment, sha256_file

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_BAD_INPUT = 2
EXIT_UNDECIDED = 3
_EXIT_CODES = {PASS: EXIT_PASS, FAIL: EXIT_REGRESSION}
_HEADLINES = {PASS: "PASS", FAIL: "REGRESSION"}
METRICS = ("boolq_acc", "boolq_gold_ll")  # what the gate judges (conf/regress.yaml `metric`)


@dataclass
class Side:
    """One side of the comparison: what it is, and its BoolQ result."""

    label: str
    result: BoolQResult


@dataclass
class Check:
    """One finished regression check: both sides, the comparison, the gate, and (for a rebuilt
    recipe) how the saved tensors compare."""

    mode: str  # "recipe" | "run" | "model"
    recipe_key: str  # the re-run recipe's config_hash, or the candidate's label
    recipe_name: str  # the recipe's run name (or the candidate's label): how the history names it
    reference: Side
    candidate: Side
    comparison: BoolQComparison
    verdict: Verdict
    reference_run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    bytes_identical: bool | None = None  # weight files equal by sha256 (recipe mode)
    tensor_diff: TensorDiff | None = None  # None: identical bytes, or the reference's files are gone
    digests: dict[str, str] | None = None  # content keys of the model and data (recipe mode)
    data_files: dict[str, str | None] = field(default_factory=dict)  # {context: path} logged as inputs
    metric: str = "boolq_acc"  # what the verdict judged

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES.get(self.verdict.status, EXIT_UNDECIDED)


def champion_run_id(client: MlflowClient, model_name: str, alias: str) -> tuple[str, str]:
    """Run id and version of the registered model's ``alias``."""
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        message = f"registered model {model_name!r} has no alias {alias!r}; promote one with python -m sweep.select"
        raise QuantInputError("against", message) from None
    return version.run_id, str(version.version)


def baseline_side(client: MlflowClient, against: str, cfg: DictConfig) -> tuple[Side, str | None, str | None]:
    """``champion``, a run id, or a result file; with the baseline's run id and model version."""
    if against == "champion":
        run_id, version = champion_run_id(client, str(cfg.registry.model_name), str(cfg.registry.alias))
        label = f"{cfg.registry.model_name}@{cfg.registry.alias} (version {version}, run {run_id[:8]})"
        return Side(label, run_result(client, run_id)), run_id, version
    if Path(against).is_file():
        return Side(f"file {against}", load_boolq_result(against)), None, None
    return Side(f"run {against[:8]}", run_result(client, against)), against, None


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


def gold_log_likelihoods(result: BoolQResult, order: Sequence[int]) -> list[float]:
    """Per example (in ``order`` of row indices): lm-eval's log-likelihood of the gold answer."""
    rows = {row.index: row for row in result.per_example}
    return [rows[i].ll_yes if rows[i].gold == 1 else rows[i].ll_no for i in order]


def gate(reference: BoolQResult, candidate: BoolQResult, cfg: DictConfig) -> tuple[BoolQComparison, Verdict]:
    """Compare the two results row by row and gate the drop of ``cfg.metric`` (paired, same rows):
    ``boolq_acc`` by the paired-proportions bound, ``boolq_gold_ll`` (nats) by the paired bootstrap."""
    metric = cfg.get("metric", "boolq_acc")
    if metric not in METRICS:
        raise invalid_value("metric", metric, METRICS)
    try:
        comparison = compare_boolq(reference, candidate)
    except ValueError as exc:
        raise QuantInputError("against", f"baseline and candidate cannot be compared: {exc}") from None
    c, margin, alpha = comparison, float(cfg.margin), float(cfg.alpha)
    if metric == "boolq_acc":
        return c, paired_counts(c.n_reference_only, c.n_candidate_only, c.n, margin, alpha)
    order = [row.index for row in reference.per_example]
    scores = gold_log_likelihoods(reference, order), gold_log_likelihoods(candidate, order)
    return c, paired_scores(*scores, margin=margin, alpha=alpha, higher_is_better=True)


def check_recipe(client: MlflowClient, recipe: Recipe, cfg: DictConfig, device: str, scratch: Path) -> Check:
    """Rebuild ``recipe`` into ``scratch``, compare its bytes and tensors with the recorded
    output, evaluate it on the recorded rows and gate it."""
    store = WorkStore(None)  # the model's content identity, hashed once for both
    check_inputs_unchanged(recipe, store)
    digests = input_digests(recipe, store)
    rebuilt = rebuild(recipe, scratch / "rebuilt")
    recorded = weight_hashes(recipe.record)
    identical = bool(recorded) and all(
        (rebuilt / name).is_file() and sha256_file(rebuilt / name) == digest for name, digest in recorded.items()
    )
    tensor_diff = None
    if not identical:
        reference_dir = recorded_weights(client, recipe, scratch / "recorded")
        tensor_diff = diff_saved(reference_dir, rebuilt) if reference_dir is not None else None
    candidate = evaluate_like(str(rebuilt), recipe.result, device)
    comparison, verdict = gate(recipe.result, candidate, cfg)
    return Check(
        "recipe",
        recipe.config_hash,
        recipe.record.name,
        Side(recipe.label, recipe.result),
        Side("rebuilt with today's code", candidate),
        comparison,
        verdict,
        recipe.run_id,
        recipe.model_name,
        recipe.model_version,
        identical,
        tensor_diff,
        digests,
        {**recipe_data_files(recipe), "boolq": recipe.result.config.get("data_path")},
        str(cfg.metric),
    )


def check_candidate(
    client: MlflowClient,
    experiment_id: str,
    cfg: DictConfig,
    run: str | None,
    model: str | None,
    against: str,
    device: str,
) -> Check:
    """A finished run's result, or a saved model evaluated on the baseline's rows, against the baseline."""
    if against != "champion" and not Path(against).is_file():
        against = resolve_run_id(client, experiment_id, against)
    baseline, baseline_run, version = baseline_side(client, against, cfg)
    if run is not None:
        run = resolve_run_id(client, experiment_id, run)
        candidate = Side(f"run {run[:8]}", run_result(client, run))
        info = client.get_run(run)
        mode, key, name = "run", info.data.tags.get("config_hash", run), info.info.run_name or run[:8]
    else:
        candidate = Side(f"model {model}", evaluate_like(str(model), baseline.result, device))
        mode, key, name = "model", str(model), Path(str(model)).name
    comparison, verdict = gate(baseline.result, candidate.result, cfg)
    model_name = str(cfg.registry.model_name) if version is not None else None
    data = {"boolq": baseline.result.config.get("data_path")}
    return Check(
        mode,
        key,
        name,
        baseline,
        candidate,
        comparison,
        verdict,
        baseline_run,
        model_name,
        version,
        data_files=data,
        metric=str(cfg.metric),
    )


def report(check: Check) -> str:
    """The printed report; its last line is the verdict."""
    c = check.comparison
    lines = [
        f"regression check on {c.n} BoolQ examples",
        f"  baseline : {check.reference.label}: accuracy {c.reference_accuracy:.4f}",
        f"  candidate: {check.candidate.label}: accuracy {c.candidate_accuracy:.4f}",
        f"  delta {c.accuracy_delta:+.4f}; {c.n_flips} answers changed "
        f"(baseline-only correct {c.n_reference_only}, candidate-only correct {c.n_candidate_only})",
    ]
    if check.bytes_identical is not None:
        lines.append(
            "  weights: identical bytes (sha256)" if check.bytes_identical else "  weights: bytes differ (sha256)"
        )
    if check.tensor_diff is not None:
        lines.extend("  " + line for line in check.tensor_diff.summary().splitlines())
    elif check.bytes_identical is False:
        lines.append("  the recorded weights are gone: no per-tensor comparison")
    headline = _HEADLINES.get(check.verdict.status, "CANNOT DECIDE")
    lines.append(f"{headline} ({check.metric}): {check.verdict.line()}")
    return "\n".join(lines)


def check_payload(check: Check) -> dict[str, Any]:
    """The verdict, comparison and tensor diff, JSON-ready (``--json``, and the recorded run)."""
    return {
        "status": check.verdict.status,
        "passed": check.verdict.passed,
        "exit_code": check.exit_code,
        "baseline": check.reference.label,
        "candidate": check.candidate.label,
        "verdict": asdict(check.verdict),
        "comparison": asdict(check.comparison),
        "bytes_identical": check.bytes_identical,
        "tensor_diff": check.tensor_diff.to_dict() if check.tensor_diff is not None else None,
    }


def history(cfg: DictConfig, plot_path: str | None) -> int:
    """Print every recorded check per recipe, log the table and plot as a history run's artifacts."""
    tracking = cfg.tracking
    client, experiment_id = open_existing_experiment(tracking.tracking_uri, str(cfg.record.experiment_name))
    records = recorded_checks(client, experiment_id)
    if not records:
        raise QuantInputError("record.experiment_name", f"no finished checks in {cfg.record.experiment_name!r}")
    table = history_table(records)
    print(table)
    figure = history_figure(records)
    if plot_path:
        figure.savefig(plot_path, dpi=120)
    run_id = record_history(client, experiment_id, table, figure)
    print(f"plot: run {run_id} artifact {HISTORY_PLOT_ARTIFACT} in experiment '{cfg.record.experiment_name}'")
    return EXIT_PASS


def regress(cfg: DictConfig, args: argparse.Namespace) -> int:
    """Run one check (or print the history); returns the exit code."""
    if args.history:
        return history(cfg, args.plot)
    client, experiment_id = open_existing_experiment(cfg.tracking.tracking_uri, cfg.tracking.experiment_name)
    if args.recipe is not None:
        recipe = load_recipe(client, experiment_id, args.recipe, str(cfg.registry.model_name), str(cfg.registry.alias))
        with tempfile.TemporaryDirectory(prefix="regress-") as tmp:
            check = check_recipe(client, recipe, cfg, args.device, Path(tmp))
    else:
        check = check_candidate(client, experiment_id, cfg, args.run, args.model, args.against, args.device)
    if cfg.record.enabled:
        tracking = cfg.tracking
        run_id = record_check(check, tracking.tracking_uri, str(cfg.record.experiment_name), tracking.artifact_root)
        print(f"recorded as run {run_id} in experiment '{cfg.record.experiment_name}'")
    print(report(check))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(check_payload(check), indent=2) + "\n", encoding="utf-8")
    return check.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.regress", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--recipe", help="champion, models:/<name>/<version> or a run id: rebuild its recipe and check it"
    )
    what.add_argument("--run", help="a finished run id: compare its logged BoolQ result")
    what.add_argument("--model", help="a saved quantized model directory or MLflow URI: evaluate it")
    what.add_argument("--history", action="store_true", help="print every recorded check per recipe, plot it")
    parser.add_argument("--plot", help="with --history: also write the plot to this PNG file")
    parser.add_argument(
        "--against",
        default="champion",
        help="baseline of --run/--model: champion (default), a run id, or a result JSON file",
    )
    parser.add_argument("--device", default="cpu", help="where the candidate is evaluated (default cpu)")
    parser.add_argument("--json", dest="json_path", help="also write the verdict and comparison to this file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/regress.yaml")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr: the error line only
    try:
        cfg = compose_tool_config("regress", args.overrides)
        return regress(cfg, args)
    except QuantInputError as exc:
        print(f"sweep.regress: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
