"""``python -m sweep.tune``: find the most compressed recipe that meets a target, at a fraction of
the grid's cost, confirm it with the non-inferiority gate and promote it.

``conf/tune.yaml`` (``key=value`` overrides): a target (``target.metric`` kl | nll | boolq_acc,
``margin``, ``alpha``; :mod:`sweep.tune_targets`), a search space (``space.anti_method`` ×
``space.act_method``, up to ``space.max_float`` most-sensitive linears kept float) and ``rungs``
(nested numbers of units: token blocks, or BoolQ rows for ``boolq_acc``; the last is the full set).
Per setting the linears are ranked by sensitivity (``ranking``: the quantizer's SQNR, free; or KL
alone quantized, one forward pass per linear), the number kept float is found by bisection, each
probe raced on the rungs (:mod:`sweep.tune_search`). Every rung evaluation is a child run of the
tune's MLflow run, with its per-unit scores; a tune started again with the same settings resumes
that run and evaluates nothing twice. The winner is saved, registered (model version, alias
``champion``) and the cost table (evaluations per rung, units evaluated, wall time, against the
full grid) printed and logged.

Exit codes: 0 a winner was promoted, 1 nothing meets the target, 2 bad input, 3 the budget
(``budget.max_evaluations``) ran out: run the same command again to go on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from eval.data import read_boolq_jsonl
from eval.noninferiority import MIN_BOOTSTRAP_N, Verdict
from eval.token_scores import check_shuffle_seed
from quant.arch import LM_HEAD
from quant.errors import QuantInputError, invalid_value
from quant.pipeline import QuantResult
from quant.runner import save_result
from sweep.analyze import ranked_linears
from sweep.app import REPO_ROOT  # noqa: F401  (registers the ${repo_root:} resolver of conf/)
from sweep.compose import compose_tool_config
from sweep.registry import promote
from sweep.run_records import RunRecord
from sweep.tracking import finite_metrics, flatten, setup_experiment, sha256_file
from sweep.tune_search import Candidate, SearchOutcome, search
from sweep.tune_targets import BOOLQ_METRIC, METRICS, TOKEN_METRICS, BoolQTarget, TokenTarget, TuneTarget
from sweep.workbench import Setting, Workbench

EXIT_NO_WINNER = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET = 3
RANKINGS = ("sqnr", "kl")
KEY_TAG = "tune.key"
SCORES_ARTIFACT = "scores.json"


@dataclass
class TuneResult:
    """What a tune did: its exit code, the search's races and winner, its costs and report."""

    code: int
    outcome: SearchOutcome | None = None
    costs: Costs | None = None
    report: str = ""


class BudgetExhausted(Exception):
    """The tune evaluated ``budget.max_evaluations`` new rungs; what it did is recorded."""


@dataclass
class Costs:
    """What the tune spent (new work only; reused evaluations are counted apart)."""

    evaluations: Counter = field(default_factory=Counter)  # rung units → new evaluations there
    reused: int = 0
    blocks: int = 0  # units (token blocks, BoolQ rows) scored by candidates
    sensitivity_blocks: int = 0  # token blocks scored by the sensitivity ranking
    quantizations: int = 0
    started: float = field(default_factory=time.perf_counter)


class TuneJudge:
    """Scores candidates on nested prefixes of the target's units, records each (candidate, rung) as
    a child run of the tune's run, and reuses recorded ones instead of evaluating again."""

    def __init__(
        self,
        cfg: DictConfig,
        bench: Workbench,
        target: TuneTarget,
        client: MlflowClient,
        parent: RunRecord,
        costs: Costs,
    ):
        self.cfg, self.bench, self.target, self.client, self.parent = cfg, bench, target, client, parent
        self.costs = costs
        self.metric = target.metric
        self.margin, self.alpha = float(cfg.target.margin), float(cfg.target.alpha)
        self.max_new = cfg.budget.get("max_evaluations")
        self.rankings: dict[Setting, list[str]] = {}
        self._scores: dict[str, np.ndarray] = {}  # candidate key → per-block candidate scores (a prefix)
        self._models: dict[str, QuantResult] = {}
        self._recorded = self._recorded_evaluations()

    def _recorded_evaluations(self) -> dict[tuple[str, int], str]:
        runs = self.client.search_runs(
            [self.parent.tags["experiment_id"]],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent.run_id}' and tags.`tune.role` = 'evaluation'",
            max_results=50000,
        )
        return {
            (r.data.tags["tune.candidate"], int(r.data.tags["tune.units"])): r.info.run_id
            for r in runs
            if r.info.status == "FINISHED"
        }

    def ranking(self, setting: Setting) -> list[str]:
        """Quantizable linears of ``setting``, most sensitive first (computed once per setting)."""
        if setting not in self.rankings:
            if str(self.cfg.ranking) == "kl":
                blocks = int(self.cfg.sensitivity_blocks)
                rows = ranked_linears(self.bench, setting, "alone_quantized", blocks)
                self.costs.sensitivity_blocks += blocks * len(rows)
                self.rankings[setting] = [r.name for r in rows]
            else:
                result = self.model(Candidate(setting, 0))
                rows = [r for r in result.layers if r.name != LM_HEAD and r.sqnr_db is not None]
                self.rankings[setting] = [r.name for r in sorted(rows, key=lambda r: r.sqnr_db)]
        return self.rankings[setting]

    def model(self, candidate: Candidate) -> QuantResult:
        if candidate.key not in self._models:
            float_linears = self.ranking(candidate.setting)[: candidate.n_float] if candidate.n_float else []
            self._models[candidate.key] = self.bench.quantized(self.bench.recipe(candidate.setting, float_linears))
            self.costs.quantizations += 1
        return self._models[candidate.key]

    def verdict(self, candidate: Candidate, units: int) -> Verdict:
        return self.verdict_of(self._candidate_scores(candidate, units))

    def _candidate_scores(self, candidate: Candidate, units: int) -> np.ndarray:
        have = self._scores.get(candidate.key, np.empty(0))
        if have.size >= units:
            return have[:units]
        recorded = self._recorded.get((candidate.key, units))
        if recorded is not None:
            scores = _load_scores(self.client, recorded)
            self.costs.reused += 1
        else:
            if self.max_new is not None and sum(self.costs.evaluations.values()) >= int(self.max_new):
                raise BudgetExhausted
            block_scores = self._score(candidate, range(have.size, units))
            scores = np.concatenate([have, block_scores])
            self.costs.evaluations[units] += 1
            self.costs.blocks += units - have.size
            self._record(candidate, units, scores)
        self._scores[candidate.key] = scores
        return scores

    def _score(self, candidate: Candidate, indices: range) -> np.ndarray:
        return self.target.scores(self.model(candidate).model, indices)

    def _record(self, candidate: Candidate, units: int, scores: np.ndarray) -> None:
        tags = {
            "mlflow.parentRunId": self.parent.run_id,
            "tune.role": "evaluation",
            "tune.candidate": candidate.key,
            "tune.units": str(units),
            KEY_TAG: self.parent.tags[KEY_TAG],
        }
        run = self.client.create_run(self.parent.tags["experiment_id"], run_name=f"{candidate.key}@{units}", tags=tags)
        verdict = self.verdict_of(scores)
        metrics = {"n_float": candidate.n_float, "mean_score": float(scores.mean()), **verdict.to_metrics()}
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, 0) for key, value in finite_metrics(metrics).items()]
        self.client.log_batch(run.info.run_id, metrics=batch, tags=[RunTag("gate.status", verdict.status)])
        self.client.log_dict(run.info.run_id, {"metric": self.metric, "scores": scores.tolist()}, SCORES_ARTIFACT)
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def verdict_of(self, scores: np.ndarray) -> Verdict:
        """The gate on the scores of the first ``scores.size`` units (:mod:`sweep.tune_targets`)."""
        return self.target.verdict(scores, self.margin, self.alpha)


def _load_scores(client: MlflowClient, run_id: str) -> np.ndarray:
    path = client.download_artifacts(run_id, SCORES_ARTIFACT)
    return np.asarray(json.loads(Path(path).read_text())["scores"], dtype=float)


def check_config(cfg: DictConfig) -> tuple[list[Setting], list[int]]:
    """The settings and rungs of ``cfg``, or a one-line error naming the bad key."""
    metric = str(cfg.target.metric)
    if metric not in METRICS:
        raise invalid_value("target.metric", cfg.target.metric, METRICS)
    if str(cfg.ranking) not in RANKINGS:
        raise invalid_value("ranking", cfg.ranking, RANKINGS)
    rungs = list(cfg.rungs)
    if not rungs or any(not isinstance(r, int) or r < 1 for r in rungs) or rungs != sorted(set(rungs)):
        raise invalid_value("rungs", rungs, "increasing unit counts, e.g. [20, 40, 80, 160]")
    if rungs[0] < MIN_BOOTSTRAP_N:
        raise invalid_value(
            "rungs", rungs, f"a first rung of at least {MIN_BOOTSTRAP_N} units (the gate decides nothing below)"
        )
    check_shuffle_seed(cfg.tokens.get("shuffle_seed"))
    if metric in TOKEN_METRICS and rungs[-1] != int(cfg.tokens.n_blocks):
        raise invalid_value(
            "rungs", rungs, f"the last rung must be the full set, tokens.n_blocks = {int(cfg.tokens.n_blocks)}"
        )
    if metric == BOOLQ_METRIC:
        _check_boolq_rows(str(cfg.boolq.data_path), rungs[-1])
    max_float = cfg.space.max_float
    if isinstance(max_float, bool) or not isinstance(max_float, int) or max_float < 0:
        raise invalid_value("space.max_float", max_float, "an integer >= 0")
    settings = [Setting(str(a), int(m)) for a in cfg.space.anti_method for m in cfg.space.act_method]
    if not settings:
        raise invalid_value("space", OmegaConf.to_container(cfg.space), "at least one anti_method and act_method")
    return settings, rungs


def _check_boolq_rows(data_path: str, needed: int) -> None:
    """The BoolQ file of a ``boolq_acc`` tune holds at least the last rung's rows."""
    try:
        rows = len(read_boolq_jsonl(data_path))
    except (OSError, ValueError) as exc:
        raise QuantInputError("boolq.data_path", f"cannot read BoolQ rows from {data_path}: {exc}") from None
    if rows < needed:
        raise invalid_value("rungs", needed, f"a last rung of at most the {rows} rows of {data_path}")


def tune_target(cfg: DictConfig, bench: Workbench) -> TuneTarget:
    """The target of ``cfg.target.metric`` over the workbench's float model."""
    metric = str(cfg.target.metric)
    if metric in TOKEN_METRICS:
        return TokenTarget(metric, bench.reference)
    boolq = cfg.boolq
    return BoolQTarget(
        bench.loaded.model,
        bench.loaded.tokenizer,
        Path(str(boolq.data_path)),
        int(cfg.rungs[-1]),
        batch_size=int(boolq.batch_size),
        add_bos_token=bool(boolq.add_bos_token),
    )


def tune_key(cfg: DictConfig) -> str:
    """What identifies a tune for resuming: everything but the budget and the run's name."""
    values = OmegaConf.to_container(cfg, resolve=True)
    values.pop("budget", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_parent(client: MlflowClient, experiment_id: str, cfg: DictConfig, key: str) -> tuple[RunRecord, bool]:
    """The tune's run: an unfinished one with the same key (resumed), else a new one."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and tags.`tune.role` = 'tune'", max_results=100
    )
    resumable = [r for r in runs if r.info.status != "FINISHED"]
    if resumable:
        run = max(resumable, key=lambda r: r.info.start_time)
        client.update_run(run.info.run_id, status="RUNNING")
        resumed = True
    else:
        run = client.create_run(experiment_id, run_name=str(cfg.name), tags={KEY_TAG: key, "tune.role": "tune"})
        for name, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items():
            client.log_param(run.info.run_id, name, value)
        resumed = False
    record = RunRecord.from_run(client.get_run(run.info.run_id))
    record.tags["experiment_id"] = experiment_id
    return record, resumed


def cost_table(
    costs: Costs, outcome: SearchOutcome, n_settings: int, max_float: int, n_units: int, unit_name: str = "blocks"
) -> str:
    """Candidates, evaluations per rung, units (token blocks, BoolQ rows) evaluated and wall time,
    against the full grid. Sensitivity blocks (``ranking: kl``) are token blocks whatever the target."""
    grid_candidates = n_settings * (max_float + 1)
    grid_units = grid_candidates * n_units
    considered = len({r.candidate.key for r in outcome.races})
    total_units = costs.blocks + costs.sensitivity_blocks
    lines = [f"rung ({unit_name})  new evaluations"]
    lines += [f"{units:>{len(unit_name) + 7}}  {count:>15}" for units, count in sorted(costs.evaluations.items())]
    rows = [
        ("candidates", considered, grid_candidates),
        ("quantizations", costs.quantizations, grid_candidates),
        (f"{unit_name} evaluated", total_units, grid_units),
    ]
    lines += ["", f"{'':<20}{'tune':>10}{'full grid':>12}{'ratio':>8}"]
    lines += [f"{name:<20}{tune:>10}{grid:>12}{tune / grid:>8.2f}" for name, tune, grid in rows]
    lines += [
        f"  of which sensitivity {costs.sensitivity_blocks:>7}",
        f"reused evaluations (resume): {costs.reused}",
        f"wall time: {time.perf_counter() - costs.started:.1f} s",
    ]
    return "\n".join(lines)


def promote_winner(
    client: MlflowClient, judge: TuneJudge, parent: RunRecord, winner: Candidate, cfg: DictConfig
) -> str:
    """Save the winner, record it as a child run with its weights' sha256, register it, move the alias."""
    result = judge.model(winner)
    directory = Path(str(cfg.save_directory)) / winner.key
    saved = save_result(result, judge.bench.loaded, str(directory), overwrite=True)
    tags = {
        "mlflow.parentRunId": parent.run_id,
        "tune.role": "winner",
        "tune.candidate": winner.key,
        "save_directory": str(saved.directory),
        **{f"sha256.{p.name}": sha256_file(p) for p in saved.weight_files},
    }
    run = client.create_run(parent.tags["experiment_id"], run_name=f"winner-{winner.key}", tags=tags)
    client.log_metric(run.info.run_id, "size_bytes", float(saved.total_bytes))
    client.log_metric(run.info.run_id, "float_layers", float(len(result.float_layers)))
    client.log_dict(run.info.run_id, result.config.to_dict(), "recipe.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    record = RunRecord.from_run(client.get_run(run.info.run_id))
    version, _ = promote(client, record, str(cfg.registry.model_name), str(cfg.registry.alias))
    return str(version.version)


def tune(cfg: DictConfig) -> TuneResult:
    """Run (or resume) the tune of ``cfg``."""
    settings, rungs = check_config(cfg)
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    client = MlflowClient(tracking.tracking_uri)
    key = tune_key(cfg)
    parent, resumed = open_parent(client, experiment_id, cfg, key)
    print(f"tune {cfg.name}: run {parent.run_id} ({'resumed' if resumed else 'new'}), target {cfg.target.metric}")
    costs = Costs()
    bench = Workbench.open(cfg)
    target = tune_target(cfg, bench)
    judge = TuneJudge(cfg, bench, target, client, parent, costs)
    try:
        outcome = search(judge, settings, int(cfg.space.max_float), rungs)
    except BudgetExhausted:
        client.set_terminated(parent.run_id, "KILLED")
        print(f"budget of {cfg.budget.max_evaluations} new evaluations reached; run the same command again to go on")
        return TuneResult(EXIT_BUDGET, costs=costs)
    except BaseException:
        client.set_terminated(parent.run_id, "FAILED")
        raise
    table = cost_table(costs, outcome, len(settings), int(cfg.space.max_float), rungs[-1], target.unit_name)
    decisions = "\n".join(
        f"{r.candidate.key:<28} {r.status:<10} at {r.units:>5} {target.unit_name}  {r.verdict.line()}"
        for r in outcome.races
    )
    client.log_text(parent.run_id, decisions + "\n\n" + table + "\n", "tune/report.txt")
    print(decisions + "\n\n" + table)
    if outcome.winner is None:
        client.set_terminated(parent.run_id, "FINISHED")
        print("\nno candidate meets the target")
        return TuneResult(EXIT_NO_WINNER, outcome, costs, table)
    winner = outcome.winner.candidate
    version = promote_winner(client, judge, parent, winner, cfg)
    client.set_tag(parent.run_id, "tune.winner", winner.key)
    client.log_metric(parent.run_id, "winner_n_float", winner.n_float)
    client.set_terminated(parent.run_id, "FINISHED")
    print(f"\nwinner {winner.key}: {outcome.winner.verdict.line()}")
    print(f"promoted as version {version} of '{cfg.registry.model_name}' alias '{cfg.registry.alias}'")
    return TuneResult(0, outcome, costs, table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/tune.yaml")
    args = parser.parse_args(argv)
    try:
        return tune(compose_tool_config("tune", args.overrides)).code
    except QuantInputError as exc:
        print(f"sweep.tune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
