"""What a recipe is judged on: a target metric, how it is oriented, and the gate of one logged run
against the float model on that metric (``eval.noninferiority``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eval.noninferiority import Verdict, paired_counts
from quant.errors import invalid_value


@dataclass(frozen=True)
class Target:
    """A metric the gate can judge from a job run's logged metrics."""

    metric: str  # the run's metric, e.g. boolq_acc
    higher_is_better: bool
    description: str


TARGETS: dict[str, Target] = {
    "boolq_acc": Target("boolq_acc", True, "BoolQ accuracy (lm-eval), paired per example with the float model"),
}


def target(metric: str) -> Target:
    """The target called ``metric``; a one-line error naming the valid ones otherwise."""
    if metric not in TARGETS:
        raise invalid_value("rule.metric", metric, sorted(TARGETS))
    return TARGETS[metric]


def run_verdict(metrics: Mapping[str, float], metric: str, margin: float, alpha: float) -> Verdict | str:
    """The gate of a job run against the float model, or why it cannot be judged (a reason)."""
    chosen = target(metric)
    if metrics.get(chosen.metric) is None:
        return f"no {chosen.metric}"
    counts = [metrics.get(f"vs_float_{key}") for key in ("n_reference_only", "n_candidate_only", "n")]
    if any(value is None for value in counts):
        return "no paired comparison with the float model"
    reference_only, candidate_only, n = (int(value) for value in counts)
    return paired_counts(reference_only, candidate_only, n, margin, alpha)
