"""``python -m sweep.select``: pick the recipe to ship from an MLflow experiment and promote it.

The rule (``conf/select.yaml``, overridable as ``key=value``): among the finished runs whose
BoolQ accuracy is at most ``rule.max_drop`` below the float model's and that are not
significantly worse than float by McNemar's test (``rule.mcnemar_alpha``), take the most
accurate; runs within ``rule.tie_tolerance`` of it are tied and the smallest output wins.
The champion's weights are registered as an MLflow model version and get the alias ``champion``.
``--dry-run`` prints the same ranking and choice without touching the registry.

Exit codes: 0 a champion was chosen (and promoted unless --dry-run), 1 no run satisfies the rule,
2 bad input (unknown experiment, bad override, runs that cannot be compared).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from quant.errors import QuantInputError, invalid_value
from sweep.compose import CONF_DIR, compose_tool_config
from sweep.registry import promote
from sweep.runs import RunRecord, job_runs, latest_per_config, sweep_runs
from sweep.summary import fmt, fmt_mb, fmt_signed, format_table
from sweep.tracking import open_existing_experiment

EXIT_NO_CHAMPION = 1
EXIT_BAD_INPUT = 2
# Runs are comparable only when these parameters agree (same model, same BoolQ rows).
COMPARABLE_PARAMS = ("model.name", "model.path", "eval.boolq.data_path", "eval.boolq.limit", "eval.boolq.seed")


@dataclass(frozen=True)
class SelectionRule:
    """Which finished runs may ship and which of them does."""

    metric: str = "boolq_acc"
    max_drop: float = 0.02
    mcnemar_alpha: float | None = 0.05
    tie_tolerance: float = 0.0
    tie_break: str = "size_bytes"

    def __post_init__(self) -> None:
        if not _is_number(self.max_drop) or self.max_drop < 0:
            raise invalid_value("rule.max_drop", self.max_drop, "a number >= 0 (absolute accuracy)")
        if self.mcnemar_alpha is not None and (not _is_number(self.mcnemar_alpha) or not 0 < self.mcnemar_alpha < 1):
            raise invalid_value("rule.mcnemar_alpha", self.mcnemar_alpha, "a number in (0, 1), or null for no test")
        if not _is_number(self.tie_tolerance) or self.tie_tolerance < 0:
            raise invalid_value("rule.tie_tolerance", self.tie_tolerance, "a number >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SelectionRule:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise QuantInputError(f"rule.{unknown[0]}", f"unknown setting; valid: {', '.join(sorted(known))}")
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Verdict:
    """A run judged by the rule: eligible or not (and why)."""

    record: RunRecord
    eligible: bool
    reason: str


def judge(record: RunRecord, rule: SelectionRule) -> Verdict:
    """Whether ``record`` may ship under ``rule``; ``reason`` says why not."""
    value = record.metric(rule.metric)
    float_value = record.metric(f"float_{rule.metric}")
    if value is None:
        return Verdict(record, False, f"no {rule.metric}")
    if float_value is None:
        return Verdict(record, False, "no float baseline to compare with")
    drop = float_value - value
    if drop > rule.max_drop + 1e-12:
        return Verdict(record, False, f"drop {drop:.4f} > {rule.max_drop}")
    p_value = record.metric("vs_float_mcnemar_p")
    if rule.mcnemar_alpha is not None and drop > 0:
        if p_value is None:
            return Verdict(record, False, "no McNemar p-value")
        if p_value < rule.mcnemar_alpha:
            return Verdict(record, False, f"significantly worse (p={p_value:.3f} < {rule.mcnemar_alpha})")
    return Verdict(record, True, "")


def rank(records: Sequence[RunRecord], rule: SelectionRule) -> list[Verdict]:
    """Champion first (if any run is eligible), then the other eligible runs best first, then the rest."""
    verdicts = [judge(r, rule) for r in records]

    def score(v: Verdict) -> float:
        return v.record.metrics.get(rule.metric, float("-inf"))

    def tie_value(v: Verdict) -> float:
        return v.record.metrics.get(rule.tie_break, float("inf"))

    eligible = sorted((v for v in verdicts if v.eligible), key=lambda v: (-score(v), tie_value(v), v.record.start_time))
    others = sorted((v for v in verdicts if not v.eligible), key=lambda v: (-score(v), v.record.start_time))
    if not eligible:
        return others
    best = score(eligible[0])
    tied = [v for v in eligible if score(v) >= best - rule.tie_tolerance - 1e-12]
    champion = min(tied, key=lambda v: (tie_value(v), -score(v), v.record.start_time))
    return [champion, *(v for v in eligible if v is not champion), *others]


def configured_rule() -> SelectionRule:
    """The rule as ``conf/select.yaml`` states it (without command-line overrides)."""
    return SelectionRule.from_mapping(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "select.yaml").rule))


def search_objective(metrics: Mapping[str, float], rule: SelectionRule) -> float:
    """What a search over recipes maximizes: the rule's metric when :func:`judge` would let the run
    ship, and the metric minus 1 when it would not. For an accuracy (in [0, 1]) every eligible run
    then scores above every ineligible one, and the ineligible ones still rank by the metric. NaN
    when the run has no value of the metric (a failed job)."""
    record = RunRecord("", "", "FINISHED", "", 0, None, metrics=dict(metrics))
    value = record.metric(rule.metric)
    if value is None:
        return math.nan
    return value if judge(record, rule).eligible else value - 1.0


def check_comparable(records: Sequence[RunRecord]) -> None:
    """Refuse to rank runs of different models or evaluated on different BoolQ rows."""
    for param in COMPARABLE_PARAMS:
        values = sorted({r.params.get(param, "") for r in records})
        if len(values) > 1:
            raise QuantInputError(
                "filter",
                f"the runs differ in {param} ({', '.join(values[:4])}); select among comparable runs, "
                f"e.g. with the MLflow filter params.`{param}` = '{values[0]}' (docs/sweeps.md shows the quoting)",
            )


def ranking_table(verdicts: Sequence[Verdict], rule: SelectionRule, champion_found: bool) -> str:
    rows = []
    for i, v in enumerate(verdicts, start=1):
        r = v.record
        status = ("CHAMPION" if i == 1 and champion_found else "eligible") if v.eligible else v.reason
        rows.append(
            [
                str(i),
                r.name,
                fmt(r.metric(rule.metric)),
                fmt_signed(r.metric("vs_float_accuracy_delta")),
                fmt(r.metric("vs_float_mcnemar_p"), ".3f"),
                fmt_mb(r.metric("size_bytes")),
                r.run_id[:8],
                status,
            ]
        )
    headers = ["#", "run", rule.metric, "Δ float", "McNemar p", "size MB", "run id", "verdict"]
    return format_table(headers, rows)


def candidate_runs(client: MlflowClient, experiment_id: str, filter_string: str, sweep: str | None) -> list[RunRecord]:
    """Finished job runs, one per config (the latest), from the experiment or one sweep."""
    records = job_runs(client, experiment_id, filter_string)
    if sweep:
        in_sweep = {r.run_id for r in sweep_runs(client, experiment_id, sweep)}
        records = [r for r in records if r.run_id in in_sweep]
    return [r for r in latest_per_config(records) if r.status == "FINISHED"]


def select(cfg: DictConfig, dry_run: bool) -> int:
    """Rank, print, promote; returns the exit code."""
    rule = SelectionRule.from_mapping(dict(cfg.rule))
    client, experiment_id = open_existing_experiment(cfg.tracking.tracking_uri, cfg.tracking.experiment_name)
    records = candidate_runs(client, experiment_id, str(cfg.filter or ""), cfg.sweep)
    if not records:
        print(f"no finished runs in experiment '{cfg.tracking.experiment_name}' match")
        return EXIT_NO_CHAMPION
    check_comparable(records)
    verdicts = rank(records, rule)
    found = verdicts[0].eligible
    print(ranking_table(verdicts, rule, found))
    if not found:
        print(f"\nno run satisfies the rule (max_drop {rule.max_drop}, mcnemar_alpha {rule.mcnemar_alpha})")
        return EXIT_NO_CHAMPION
    champion = verdicts[0].record
    target = f"model '{cfg.registry.model_name}' alias '{cfg.registry.alias}'"
    if dry_run:
        print(f"\ndry run: would promote {champion.name} (run {champion.run_id}) to {target}")
        return 0
    version, moved = promote(client, champion, str(cfg.registry.model_name), str(cfg.registry.alias))
    print(
        f"\n{'promoted' if moved else 'already champion:'} {champion.name} (run {champion.run_id}) "
        f"as version {version.version} of {target}"
    )
    print(f"fetch: mlflow.artifacts.download_artifacts('models:/{cfg.registry.model_name}@{cfg.registry.alias}')")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.select", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="show the ranking and the choice; change nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/select.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = compose_tool_config("select", args.overrides)
        return select(cfg, args.dry_run)
    except QuantInputError as exc:
        print(f"sweep.select: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
