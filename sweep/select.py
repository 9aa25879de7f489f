"""``python -m sweep.select``: pick the recipe to ship from an MLflow experiment and promote it.

The rule (``conf/select.yaml``, overridable as ``key=value``): a finished run may ship only when
the non-inferiority gate (``eval.noninferiority``) passes it against the float model on the same
examples: the one-sided upper (1 − ``rule.alpha``) bound of the drop in ``rule.metric`` is below
``rule.margin``. Among the runs that pass, the most compressed ships, not the luckiest: the
smallest value of each ``rule.prefer`` metric in turn (default: fewest float layers, then the
smallest output), then the better metric, then the earliest run. The champion's weights are
registered as an MLflow model version and get the alias ``champion``. ``--dry-run`` prints the
same ranking and choice without touching the registry.

Exit codes: 0 a champion was chosen (and promoted unless --dry-run), 1 no run passes the gate,
2 bad input (unknown experiment, bad override, runs that cannot be compared).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from eval.noninferiority import FAIL, PASS, UNDECIDED, Verdict
from quant.errors import QuantInputError, invalid_value
from sweep.compose import compose_tool_config
from sweep.registry import promote
from sweep.run_records import RunRecord, job_runs, latest_per_config, sweep_runs
from sweep.summary import fmt, fmt_mb, fmt_signed, format_table
from sweep.targets import PairedUnits, load_paired_units, run_verdict, target
from sweep.tracking import open_existing_experiment

EXIT_NO_CHAMPION = 1
EXIT_BAD_INPUT = 2
# Runs are comparable only when these parameters agree (same model, same BoolQ rows, same perplexity windows).
COMPARABLE_PARAMS = (
    "model.name",
    "model.path",
    "eval.boolq.data_path",
    "eval.boolq.limit",
    "eval.boolq.seed",
    "eval.perplexity.data_path",
    "eval.perplexity.max_tokens",
    "eval.perplexity.block_size",
    "eval.perplexity.stride",
)


@dataclass(frozen=True)
class SelectionRule:
    """Which finished runs may ship (the gate) and which of them does (``prefer``)."""

    metric: str = "boolq_acc"
    margin: float = 0.01
    alpha: float = 0.05
    # Metrics compared in turn among passing runs, smallest first; "-name" for largest first.
    prefer: tuple[str, ...] = ("float_layers", "size_bytes")

    def __post_init__(self) -> None:
        target(self.metric)
        if not _is_number(self.margin) or not 0 <= self.margin < math.inf:
            raise invalid_value("rule.margin", self.margin, "a number >= 0 in the metric's units (0.01 = 1 point)")
        if not _is_number(self.alpha) or not 0 < self.alpha < 0.5:
            raise invalid_value("rule.alpha", self.alpha, "a number in (0, 0.5)")
        if isinstance(self.prefer, str) or not all(isinstance(k, str) and k.lstrip("-") for k in self.prefer):
            raise invalid_value("rule.prefer", self.prefer, "a list of metric names, '-name' for largest first")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SelectionRule:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise QuantInputError(f"rule.{unknown[0]}", f"unknown setting; valid: {', '.join(sorted(known))}")
        values = dict(values)
        if "prefer" in values and isinstance(values["prefer"], (list, tuple)):
            values["prefer"] = tuple(values["prefer"])
        return cls(**values)

    def preference_key(self, record: RunRecord) -> tuple[float, ...]:
        """Sort key among passing runs: the ``prefer`` metrics (missing ones last), then the better metric."""
        keys = []
        for name in self.prefer:
            value = record.metric(name.lstrip("-"))
            keys.append(math.inf if value is None else (-value if name.startswith("-") else value))
        value = record.metric(self.metric)
        oriented = value if target(self.metric).higher_is_better else -value
        return (*keys, -oriented)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Judged:
    """A run and the gate's verdict on it (None with a ``reason`` when it cannot be judged)."""

    record: RunRecord
    verdict: Verdict | None
    reason: str = ""

    @property
    def eligible(self) -> bool:
        return self.verdict is not None and self.verdict.status == PASS


def judge(record: RunRecord, rule: SelectionRule, units: PairedUnits | None = None) -> Judged:
    """The gate's verdict on ``record`` under ``rule`` (``units``: per-unit scores, for targets that need them)."""
    verdict = run_verdict(record.metrics, rule.metric, rule.margin, rule.alpha, units)
    if isinstance(verdict, str):
        return Judged(record, None, verdict)
    return Judged(record, verdict)


_STATUS_ORDER = {PASS: 0, UNDECIDED: 1, FAIL: 2}


def rank(
    records: Sequence[RunRecord], rule: SelectionRule, units: Mapping[str, PairedUnits | None] | None = None
) -> list[Judged]:
    """Passing runs first, most compressed first (the first is the champion); then the undecided
    ones, closest to passing first; then the failed ones; then the runs that cannot be judged.
    ``units``: run id → per-unit scores, for targets judged on them."""
    judged = [judge(r, rule, (units or {}).get(r.run_id)) for r in records]

    def key(j: Judged) -> tuple:
        if j.verdict is None:
            return (3, 0.0, (), j.record.start_time)
        order = _STATUS_ORDER[j.verdict.status]
        preference = rule.preference_key(j.record) if order == 0 else ()
        return (order, j.verdict.upper_bound if order else 0.0, preference, j.record.start_time)

    return sorted(judged, key=key)


def configured_rule(cfg: DictConfig) -> SelectionRule:
    """The rule of a composed config (``rule``: conf/rule/, command-line overrides included)."""
    return SelectionRule.from_mapping(OmegaConf.to_container(cfg.rule, resolve=True))


def search_objective(metrics: Mapping[str, float], rule: SelectionRule) -> float:
    """What a search over recipes maximizes: the rule's metric (oriented so that larger is better)
    when the gate passes the run, and that minus 1 when it does not. For an accuracy (in [0, 1])
    every passing run then scores above every other one, and the others still rank by the metric.
    NaN when the run has no value of the metric (a failed job)."""
    value = metrics.get(rule.metric)
    if value is None:
        return math.nan
    oriented = value if target(rule.metric).higher_is_better else -value
    record = RunRecord("", "", "FINISHED", "", 0, None, metrics=dict(metrics))
    return oriented if judge(record, rule).eligible else oriented - 1.0


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


def verdict_text(judged: Judged, champion: bool) -> str:
    """The verdict column: CHAMPION / pass / undecided with the n that would decide / fail / why not judged."""
    v = judged.verdict
    if v is None:
        return judged.reason
    if v.status == PASS:
        return "CHAMPION" if champion else "pass"
    if v.status == FAIL:
        return "fail: drop > margin"
    return "undecided" + (f" (~{v.n_needed} rows would decide)" if v.n_needed else "")


def ranking_table(judged: Sequence[Judged], rule: SelectionRule, champion_found: bool) -> str:
    rows = []
    for i, j in enumerate(judged, start=1):
        r, v = j.record, j.verdict
        rows.append(
            [
                str(i),
                r.name,
                fmt(r.metric(rule.metric)),
                fmt_signed(None if v is None else v.drop),
                fmt_signed(None if v is None else v.upper_bound),
                fmt(r.metric("float_layers"), ".0f"),
                fmt_mb(r.metric("size_bytes")),
                r.run_id[:8],
                verdict_text(j, champion=i == 1 and champion_found),
            ]
        )
    level = f"{100 * (1 - rule.alpha):g}%"
    headers = ["#", "run", rule.metric, "drop", f"{level} upper", "float layers", "size MB", "run id", "verdict"]
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
    rule = configured_rule(cfg)
    client, experiment_id = open_existing_experiment(cfg.tracking.tracking_uri, cfg.tracking.experiment_name)
    records = candidate_runs(client, experiment_id, str(cfg.filter or ""), cfg.sweep)
    if not records:
        print(f"no finished runs in experiment '{cfg.tracking.experiment_name}' match")
        return EXIT_NO_CHAMPION
    check_comparable(records)
    chosen = target(rule.metric)
    with tempfile.TemporaryDirectory() as directory:
        units = {r.run_id: load_paired_units(client, r.run_id, chosen, directory) for r in records}
    judged = rank(records, rule, units)
    found = judged[0].eligible
    print(
        f"gate: {rule.metric} drop vs float, margin {rule.margin:g}, alpha {rule.alpha:g}; prefer {list(rule.prefer)}"
    )
    print(ranking_table(judged, rule, found))
    if not found:
        print(f"\nno run passes the gate ({_count_statuses(judged)})")
        return EXIT_NO_CHAMPION
    champion = judged[0].record
    destination = f"model '{cfg.registry.model_name}' alias '{cfg.registry.alias}'"
    if dry_run:
        print(f"\ndry run: would promote {champion.name} (run {champion.run_id}) to {destination}")
        return 0
    version, moved = promote(client, champion, str(cfg.registry.model_name), str(cfg.registry.alias))
    print(
        f"\n{'promoted' if moved else 'already champion:'} {champion.name} (run {champion.run_id}) "
        f"as version {version.version} of {destination}"
    )
    print(f"fetch: mlflow.artifacts.download_artifacts('models:/{cfg.registry.model_name}@{cfg.registry.alias}')")
    return 0


def _count_statuses(judged: Sequence[Judged]) -> str:
    counts = {status: 0 for status in (UNDECIDED, FAIL)}
    unjudged = 0
    for j in judged:
        if j.verdict is None:
            unjudged += 1
        else:
            counts[j.verdict.status] += 1
    return f"{counts[UNDECIDED]} undecided, {counts[FAIL]} failed, {unjudged} without a paired float comparison"


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
