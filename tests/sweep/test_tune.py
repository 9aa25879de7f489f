"""python -m sweep.tune: the search on a scripted judge, and the whole tune on a tiny model with a
planted sensitive linear (ranking, bisection, early stops, confirmation, promotion, resume)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from planted import PLANTED, write_planted_inputs

from eval.noninferiority import paired_scores
from quant.model_io import load_model
from sweep.compose import compose_tool_config
from sweep.tune import main
from sweep.tune_search import Candidate, search
from sweep.tune_targets import BoolQTarget
from sweep.workbench import Setting, Workbench
from sweep_helpers import subprocess_env
from tiny_data import write_self_labelled_boolq, write_tiny_boolq

RUNGS = [20, 40, 80]


class ScriptedJudge:
    """Per-block drops with a known mean per candidate: a setting needs ``needed[setting]`` float
    linears to be within the margin; each one missing adds a margin to the drop, each extra one
    halves it."""

    def __init__(self, needed: dict[Setting, int], margin: float = 0.1):
        self.needed, self.margin = needed, margin
        self.calls: list[tuple[str, int]] = []

    def verdict(self, candidate: Candidate, units: int):
        self.calls.append((candidate.key, units))
        gap = self.needed[candidate.setting] - candidate.n_float
        mean = self.margin * (2.0 + gap if gap > 0 else 0.2 / (1 - gap))
        noise = np.random.default_rng(abs(hash(candidate.key)) % 2**32).normal(0, 0.05, units)
        return paired_scores(np.zeros(units), mean + noise, self.margin, higher_is_better=False)


def test_bisection_finds_the_fewest_float_linears_and_stops_losers_at_the_first_rung():
    a, b, c = Setting("none", 1), Setting("m1", 1), Setting("m1", 3)
    judge = ScriptedJudge({a: 3, b: 2, c: 4})
    outcome = search(judge, [a, b, c], max_float=5, rungs=RUNGS)
    assert outcome.winner.candidate == Candidate(b, 2)
    assert outcome.winner.units == RUNGS[-1]  # confirmed on the full set
    # Losers (too few float linears) fail on the first rung and are never evaluated further.
    losers = {key for key, _ in judge.calls if int(key[-1]) < {"none-act1": 3, "m1-act1": 2, "m1-act3": 4}[key[:-7]]}
    assert losers and all(units == RUNGS[0] for key, units in judge.calls if key in losers)
    # After b passes with 2, c is searched only up to 2 (a candidate with more float linears cannot win).
    assert all(int(key[-1]) <= 2 for key, _ in judge.calls if key.startswith("m1-act3"))
    assert len({key for key, _ in judge.calls}) < 3 * 6  # fewer candidates than the grid


def test_every_all_quantized_probe_runs_first_and_orders_the_bisections():
    a, b, c = Setting("none", 1), Setting("m1", 1), Setting("m1", 3)
    judge = ScriptedJudge({a: 4, b: 3, c: 1})  # c is last in the space but closest to passing
    outcome = search(judge, [a, b, c], max_float=5, rungs=RUNGS)
    assert [key for key, _ in judge.calls[:3]] == ["none-act1-float0", "m1-act1-float0", "m1-act3-float0"]
    assert judge.calls[3][0].startswith("m1-act3")  # the smallest all-quantized drop is searched first
    assert outcome.winner.candidate == Candidate(c, 1)
    # c's one float linear bounds the others: they are evaluated with at most one.
    assert all(int(key[-1]) <= 1 for key, _ in judge.calls if not key.startswith("m1-act3"))


def test_an_all_quantized_pass_ends_the_search():
    a, b = Setting("none", 1), Setting("m1", 1)
    judge = ScriptedJudge({a: 2, b: 0})
    outcome = search(judge, [a, b], max_float=5, rungs=RUNGS)
    assert outcome.winner.candidate == Candidate(b, 0)
    assert {key for key, _ in judge.calls} == {"none-act1-float0", "m1-act1-float0"}


def test_nothing_passes_when_every_setting_needs_more_than_max_float():
    judge = ScriptedJudge({Setting("none", 1): 9})
    outcome = search(judge, [Setting("none", 1)], max_float=3, rungs=RUNGS)
    assert outcome.winner is None and all(r.status == "fail" for r in outcome.races)


def test_a_setting_replaces_the_configured_anti_method_with_its_own_defaults():
    cfg = compose_tool_config("tune", ["anti_method=m1", "anti_method.params.alpha=0.8"])
    bench = Workbench(cfg, None, [], None, None)  # recipe() reads only the config
    assert bench.recipe(Setting("none", 3), []).anti_params == {}
    recipe = bench.recipe(Setting("m1", 1), ["model.layers.0.mlp.down_proj"])
    assert recipe.anti_params == {"alpha": 0.5} and recipe.act_method == 1
    assert recipe.disable_names == ["model.layers.0.mlp.down_proj"] and recipe.disable_level == "L0"


@pytest.fixture()
def planted(tmp_path, mlflow_template) -> list[str]:
    overrides = write_planted_inputs(tmp_path)
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    return [
        *overrides,
        "tokens.n_blocks=80",
        "rungs=[20,40,80]",
        f"boolq.data_path={write_tiny_boolq(tmp_path / 'tiny-boolq.jsonl')}",  # 8 rows: too few for a boolq_acc tune
        "target.margin=0.0002",
        "space.anti_method=[none]",
        "space.act_method=[1,3]",
        "space.max_float=4",
        f"save_directory={tmp_path / 'out'}",
    ]


def _client(overrides: list[str]) -> MlflowClient:
    return MlflowClient(next(o.split("=", 1)[1] for o in overrides if o.startswith("tracking.tracking_uri=")))


def _evaluations(client: MlflowClient, finished_only: bool = False) -> list[tuple[str, int]]:
    experiment = client.get_experiment_by_name("llama-quant")
    runs = client.search_runs([experiment.experiment_id], "tags.`tune.role` = 'evaluation'", max_results=1000)
    if finished_only:
        runs = [r for r in runs if r.info.status == "FINISHED"]
    assert all(r.info.status == "FINISHED" for r in runs)
    return [(r.data.tags["tune.candidate"], int(r.data.tags["tune.units"])) for r in runs]


@pytest.mark.parametrize("ranking", ["sqnr", "kl"])
def test_tune_keeps_the_planted_linear_float_and_promotes_the_winner(planted, ranking, capsys, tmp_path):
    assert main([*planted, f"ranking={ranking}", "sensitivity_blocks=4"]) == 0
    out = capsys.readouterr().out
    client = _client(planted)
    version = client.get_model_version_by_alias("llama-quant", "champion")
    winner = client.get_run(version.run_id)
    assert winner.data.tags["tune.role"] == "winner"
    recipe = json.loads(Path(client.download_artifacts(winner.info.run_id, "recipe.json", str(tmp_path))).read_text())
    assert recipe["disable_names"] == [PLANTED]  # one float linear, the planted one
    assert winner.data.tags["tune.candidate"].endswith("-float1")
    evaluations = _evaluations(client)
    assert len(evaluations) == len(set(evaluations))  # every (candidate, rung) once
    # Candidates with no float linear fail early: none is evaluated on the full set.
    float0_rungs = {units for key, units in evaluations if key.endswith("-float0")}
    assert 20 in float0_rungs and 80 not in float0_rungs
    parent = client.get_run(winner.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["tune.winner"] == winner.data.tags["tune.candidate"]
    assert "blocks evaluated" in out and "full grid" in out
    report = Path(client.download_artifacts(parent.info.run_id, "tune/report.txt", str(tmp_path))).read_text()
    assert "blocks evaluated" in report and f"{PLANTED}" not in report
    grid_line = next(line for line in out.splitlines() if line.startswith("blocks evaluated"))
    tune_blocks, grid_blocks = (int(v) for v in grid_line.split()[2:4])
    assert tune_blocks < grid_blocks == 2 * 5 * 80
    sensitivity = int(next(line for line in out.splitlines() if "of which sensitivity" in line).split()[-1])
    assert sensitivity == (2 * 14 * 4 if ranking == "kl" else 0)  # 14 linears x 4 blocks per setting


def test_a_stopped_tune_resumes_without_repeating_evaluations(planted, capsys):
    assert main([*planted, "budget.max_evaluations=3"]) == 3
    assert "run the same command again" in capsys.readouterr().out
    client = _client(planted)
    first = _evaluations(client)
    assert len(first) == 3
    assert main(planted) == 0
    out = capsys.readouterr().out
    assert "(resumed)" in out and "reused evaluations (resume): 3" in out
    evaluations = _evaluations(client)
    assert set(first) <= set(evaluations) and len(evaluations) == len(set(evaluations))
    tunes = client.search_runs(
        [client.get_experiment_by_name("llama-quant").experiment_id], "tags.`tune.role` = 'tune'"
    )
    assert len(tunes) == 1 and tunes[0].info.status == "FINISHED"


def test_a_killed_tune_resumes_without_repeating_finished_evaluations(planted, capsys):
    """SIGKILL while the tune runs (after some evaluations are recorded), then the same command."""
    client = _client(planted)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.tune", *planted],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            experiment = client.get_experiment_by_name("llama-quant")
            if experiment is not None and len(_evaluations(client, finished_only=True)) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the tune ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = set(_evaluations(client, finished_only=True))
    assert len(before) >= 2
    assert main(planted) == 0
    out = capsys.readouterr().out
    assert "(resumed)" in out
    reused = int(next(line for line in out.splitlines() if line.startswith("reused evaluations")).split()[-1])
    assert reused >= len(before)
    after = _evaluations(client, finished_only=True)
    assert before <= set(after) and len(after) == len(set(after))  # nothing finished was evaluated again


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("target.metric=bleu", "target.metric: invalid value 'bleu'; valid values: kl, nll"),
        ("rungs=[20,40]", "rungs: invalid value [20, 40]; valid values: the last rung must be the full set"),
        ("ranking=random", "ranking: invalid value 'random'; valid values: sqnr, kl"),
        ("rungs=[10,80]", "rungs: invalid value [10, 80]; valid values: a first rung of at least 20 units"),
        ("target.metric=boolq_acc", "rungs: invalid value 80; valid values: a last rung of at most the 8 rows of"),
        ("tokens.shuffle_seed=abc", "tokens.shuffle_seed: invalid value 'abc'; valid values: an integer, or null"),
    ],
)
def test_bad_input_is_one_line(planted, override, message, capsys):
    assert main([*planted, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sweep.tune: error: {message}")


def test_boolq_target_races_on_rows_and_keeps_the_planted_linear_float(planted, tmp_path, capsys):
    data = write_self_labelled_boolq(tmp_path / "boolq.jsonl", tmp_path / "model", n=80)  # float: 1.0
    assert main([*planted, "target.metric=boolq_acc", f"boolq.data_path={data}", "target.margin=0.05"]) == 0
    out = capsys.readouterr().out
    assert "rung (examples)" in out and "examples evaluated" in out and "tango-score" in out
    client = _client(planted)
    winner = client.get_run(client.get_model_version_by_alias("llama-quant", "champion").run_id)
    recipe = json.loads(Path(client.download_artifacts(winner.info.run_id, "recipe.json", str(tmp_path))).read_text())
    assert PLANTED in recipe["disable_names"]
    evaluations = _evaluations(client)
    assert len(evaluations) == len(set(evaluations)) and {units for _, units in evaluations} <= {20, 40, 80}


def test_boolq_target_scores_any_row_range_as_the_whole_file_does(planted, tmp_path):
    loaded = load_model(str(tmp_path / "model"))
    data = write_self_labelled_boolq(tmp_path / "boolq.jsonl", tmp_path / "model", n=24)
    target = BoolQTarget(loaded.model, loaded.tokenizer, data, 24, batch_size=4)
    whole = target.scores(loaded.model, range(24))
    assert whole.tolist() == [1.0] * 24  # the rows carry this model's own answers
    parts = [target.scores(loaded.model, range(0, 10)), target.scores(loaded.model, range(10, 24))]
    assert np.concatenate(parts).tolist() == whole.tolist()
    verdict = target.verdict(whole[:20], margin=0.2, alpha=0.05)
    assert verdict.n == 20 and verdict.drop == 0 and verdict.status == "pass"
    flipped = whole.copy()
    flipped[:6] = 0.0  # six rows only float gets right
    assert target.verdict(flipped, margin=0.05, alpha=0.05).drop == 6 / 24
