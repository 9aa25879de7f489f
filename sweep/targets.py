"""What a recipe is judged on: a target metric, how it is oriented, and the gate of one logged run
against the float model on that metric (``eval.noninferiority``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from eval.noninferiority import Verdict, paired_counts, paired_scores
from quant.errors import invalid_value
from sweep.job import FLOAT_PPL_RESULT_ARTIFACT, PPL_RESULT_ARTIFACT

PairedUnits = tuple[np.ndarray, np.ndarray]  # (float's per-unit scores, the run's), same units


@dataclass(frozen=True)
class Target:
    """A metric the gate can judge from a job run: from its logged paired counts (``artifacts``
    None), or from per-unit scores in two logged result files (the run's, the float model's)."""

    metric: str  # the run's metric, e.g. boolq_acc
    higher_is_better: bool
    description: str
    artifacts: tuple[str, str] | None = None
    unit_key: str = ""  # the per-unit list in those files


TARGETS: dict[str, Target] = {
    "boolq_acc": Target("boolq_acc", True, "BoolQ accuracy (lm-eval), paired per example with the float model"),
    "wikitext2_nll": Target(
        "wikitext2_nll",
        False,
        "WikiText-2 NLL (nats/token, log perplexity), paired per window with the float model",
        (PPL_RESULT_ARTIFACT, FLOAT_PPL_RESULT_ARTIFACT),
        "window_nll",
    ),
}


def target(metric: str) -> Target:
    """The target called ``metric``; a one-line error naming the valid ones otherwise."""
    if metric not in TARGETS:
        raise invalid_value("rule.metric", metric, sorted(TARGETS))
    return TARGETS[metric]


def load_paired_units(client: MlflowClient, run_id: str, chosen: Target, directory: str) -> PairedUnits | None:
    """Float's and the run's per-unit scores from the run's result files (None when not logged)."""
    if chosen.artifacts is None:
        return None
    run_file, float_file = chosen.artifacts
    logged = {a.path for a in client.list_artifacts(run_id, str(Path(run_file).parent))}
    if not {run_file, float_file} <= logged:
        return None
    values = []
    for name in (float_file, run_file):
        data = json.loads(Path(client.download_artifacts(run_id, name, directory)).read_text())
        values.append(np.asarray(data.get(chosen.unit_key, []), dtype=float))
    return values[0], values[1]


def run_verdict(
    metrics: Mapping[str, float], metric: str, margin: float, alpha: float, units: PairedUnits | None = None
) -> Verdict | str:
    """The gate of a job run against the float model, or why it cannot be judged (a reason)."""
    chosen = target(metric)
    if metrics.get(chosen.metric) is None:
        return f"no {chosen.metric}"
    if chosen.artifacts is not None:
        if units is None or units[0].size == 0:
            return f"no per-unit scores logged ({chosen.artifacts[0]} with {chosen.unit_key})"
        if units[0].shape != units[1].shape:
            return f"{units[1].size} units for float's {units[0].size}: not the same evaluation"
        return paired_scores(units[0], units[1], margin, alpha, higher_is_better=chosen.higher_is_better)
    counts = [metrics.get(f"vs_float_{key}") for key in ("n_reference_only", "n_candidate_only", "n")]
    if any(value is None for value in counts):
        return "no paired comparison with the float model"
    reference_only, candidate_only, n = (int(value) for value in counts)
    return paired_counts(reference_only, candidate_only, n, margin, alpha)
