"""python -m sweep.select: the rule on constructed runs, the registry on a constructed experiment,
and promotion of a real sweep's champion whose weights are then fetched from MLflow alone."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eval.noninferiority import FAIL, UNDECIDED, paired_counts
from quant.reload import load_quantized
from sweep.compose import compose_tool_config
from sweep.job import FLOAT_PPL_RESULT_ARTIFACT as FLOAT_PPL
from sweep.job import PPL_RESULT_ARTIFACT as PPL
from sweep.run_records import RunRecord
from sweep.select import SelectionRule, configured_rule, main, rank, search_objective
from sweep_helpers import EXPERIMENT

WEIGHT_FILE = "quant_model_weight_w8a8.safetensors"


def record(
    name: str,
    b: int | None = 0,
    c: int = 0,
    n: int = 2000,
    float_layers: float = 0,
    size: float = 100.0,
    float_acc: float | None = 0.8,
    t: int = 0,
) -> RunRecord:
    """A job run whose paired comparison with float has ``b`` rows only float gets right and ``c``
    only the run gets right, out of ``n`` (``b=None``: no metric at all)."""
    metrics = {"size_bytes": size, "float_layers": float_layers}
    if b is not None:
        metrics["boolq_acc"] = (float_acc or 0.8) - (b - c) / n
    if float_acc is not None and b is not None:
        metrics.update(
            {
                "float_boolq_acc": float_acc,
                "vs_float_n_reference_only": b,
                "vs_float_n_candidate_only": c,
                "vs_float_n": n,
            }
        )
    return RunRecord(name, name, "FINISHED", name, t, None, metrics)


def test_rule_passing_runs_first_most_compressed_first():
    runs = [
        record("drop-shown", b=140, c=20, n=2000),  # drop 0.06: the lower bound clears the margin
        record("small-n", b=2, c=0, n=100),  # drop 0.02, McNemar p = 0.5: once eligible, now undecided
        record("lucky-larger", b=10, c=30, n=2000, float_layers=4, size=300),  # 1 point *better* than float
        record("compressed", b=12, c=10, n=2000, float_layers=0, size=200),
        record("no-baseline", float_acc=None),
        record("no-metric", b=None),
    ]
    judged = rank(runs, SelectionRule())
    assert [j.record.name for j in judged] == [
        "compressed",
        "lucky-larger",
        "small-n",
        "drop-shown",
        "no-baseline",
        "no-metric",
    ]
    assert [j.eligible for j in judged] == [True, True, False, False, False, False]
    assert judged[2].verdict.status == UNDECIDED and judged[2].verdict.n_needed > 100
    assert judged[3].verdict.status == FAIL
    assert judged[4].reason == "no paired comparison with the float model"
    assert judged[5].reason == "no boolq_acc"
    # The lucky run is more accurate, but more float layers lose; ranking by accuracy picks it.
    assert rank(runs, SelectionRule(prefer=("-boolq_acc",)))[0].record.name == "lucky-larger"
    # Fewest float layers first, then bytes: a smaller output with more float layers loses.
    tied = [record("more-floats-smaller", float_layers=2, size=50), record("fewer-floats", float_layers=1, size=500)]
    assert rank(tied, SelectionRule())[0].record.name == "fewer-floats"
    assert rank(tied, SelectionRule(prefer=("size_bytes",)))[0].record.name == "more-floats-smaller"


def test_rule_margin_and_alpha_move_the_decision():
    run = record("one-point-drop", b=40, c=20, n=2000)  # drop 0.01
    assert not rank([run], SelectionRule())[0].eligible
    assert rank([run], SelectionRule(margin=0.03))[0].eligible
    borderline = record("borderline", b=25, c=20, n=2000)  # drop 0.0025
    upper_95 = rank([borderline], SelectionRule())[0].verdict.upper_bound
    upper_80 = rank([borderline], SelectionRule(alpha=0.2))[0].verdict.upper_bound
    assert upper_80 < upper_95


def test_search_objective_is_the_rule_metric_and_ranks_failing_runs_below_passing_ones():
    runs = [record("drop-shown", b=140, c=20), record("small-n", b=2, n=100), record("passes", b=12, c=10)]
    rule = SelectionRule()
    scores = {r.name: search_objective(r.metrics, rule) for r in runs}
    assert scores == pytest.approx({"drop-shown": 0.74 - 1, "small-n": 0.78 - 1, "passes": 0.799})
    assert max(scores, key=scores.get) == rank(runs, rule)[0].record.name
    assert math.isnan(search_objective({"float_boolq_acc": 0.8}, rule))  # a failed job has no value
    # The sweep's jobs and sweep.select compose one rule, overrides included.
    assert configured_rule(compose_tool_config("config", [])) == configured_rule(compose_tool_config("select", []))
    stricter = ["rule.margin=0.02"]
    assert configured_rule(compose_tool_config("config", stricter)).margin == 0.02
    assert configured_rule(compose_tool_config("config", stricter)) == configured_rule(
        compose_tool_config("select", stricter)
    )


def test_rule_rejects_bad_settings():
    with pytest.raises(Exception, match=r"rule.margin: invalid value -0.1"):
        SelectionRule(margin=-0.1)
    with pytest.raises(Exception, match=r"rule.alpha: invalid value 0.7"):
        SelectionRule(alpha=0.7)
    with pytest.raises(Exception, match=r"rule.metric: invalid value 'bleu'; valid values: boolq_acc, wikitext2_nll"):
        SelectionRule(metric="bleu")
    with pytest.raises(Exception, match=r"rule.prefer: invalid value"):
        SelectionRule(prefer="size_bytes")
    with pytest.raises(Exception, match=r"rule.max_drop: unknown setting"):
        SelectionRule.from_mapping({"max_drop": 0.1})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_job(
    client, experiment_id, root: Path, name: str, b: int, c: int, float_layers: int, size: float, **params
) -> str:
    """A finished job run as the sweep logs one (its paired counts against float over 2000 rows),
    with a save_directory holding its weight file."""
    save = root / name
    save.mkdir(parents=True)
    (save / WEIGHT_FILE).write_bytes(name.encode() * 100)
    (save / "quant_model_description.json").write_text('{"model_quant_type": "W8A8"}')
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            "config_hash": name,
            "sweep.role": "job",
            "save_directory": str(save),
            f"sha256.{WEIGHT_FILE}": _sha(save / WEIGHT_FILE),
        },
    )
    run_id = run.info.run_id
    metrics = {
        "boolq_acc": 0.8 - (b - c) / 2000,
        "float_boolq_acc": 0.8,
        "vs_float_accuracy_delta": -(b - c) / 2000,
        "vs_float_n_reference_only": b,
        "vs_float_n_candidate_only": c,
        "vs_float_n": 2000,
        "float_layers": float_layers,
        "size_bytes": size,
    }
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in {"model.name": "tiny", "eval.boolq.limit": "2000", **params}.items():
        client.log_param(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture()
def constructed(tiny_inputs):
    client = MlflowClient(tiny_inputs.uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=tiny_inputs.artifacts.as_uri())
    root = tiny_inputs.root / "saved"
    ids = {
        "drop-shown": _log_job(client, experiment_id, root, "drop-shown", 140, 20, 0, 50),
        "undecided": _log_job(client, experiment_id, root, "undecided", 60, 30, 0, 60),
        "compressed": _log_job(client, experiment_id, root, "compressed", 12, 10, 1, 200),
        "lucky-larger": _log_job(client, experiment_id, root, "lucky-larger", 10, 30, 3, 300),
    }
    failed = client.create_run(experiment_id, run_name="failed", tags={"config_hash": "failed"})
    client.log_metric(failed.info.run_id, "boolq_acc", 0.99)
    client.set_terminated(failed.info.run_id, "FAILED")
    return tiny_inputs, client, ids


def test_dry_run_shows_the_choice_and_changes_nothing(constructed, capsys):
    inputs, client, ids = constructed
    assert main(["--dry-run", *inputs.tool_args()]) == 0
    out = capsys.readouterr().out
    first_row = next(line for line in out.splitlines() if line.startswith("1 "))
    assert "compressed" in first_row and "CHAMPION" in first_row
    assert "failed" not in out  # only finished runs are candidates
    assert f"would promote compressed (run {ids['compressed']})" in out
    assert "undecided (~" in out and "fail: drop > margin" in out
    with pytest.raises(MlflowException):
        client.get_registered_model("llama-quant")
    assert not client.list_artifacts(ids["compressed"], "model")


def test_select_registers_the_champion_and_moves_the_alias(constructed, capsys):
    inputs, client, ids = constructed
    assert main(inputs.tool_args()) == 0
    version = client.get_model_version_by_alias("llama-quant", "champion")
    assert version.run_id == ids["compressed"]
    assert "promoted compressed" in capsys.readouterr().out
    # The weights were logged from save_directory after their sha256 matched.
    logged = {a.path for a in client.list_artifacts(ids["compressed"], "model")}
    assert f"model/{WEIGHT_FILE}" in logged
    # Same choice again: no new version.
    assert main(inputs.tool_args()) == 0
    assert "already champion" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'llama-quant'")) == 1
    # Preferring accuracy picks the lucky run: a second version, the alias moves.
    assert main([*inputs.tool_args(), "rule.prefer=[-boolq_acc]"]) == 0
    moved = client.get_model_version_by_alias("llama-quant", "champion")
    assert moved.run_id == ids["lucky-larger"] and moved.version != version.version


def test_select_on_wikitext2_nll_pairs_each_window_with_float(constructed, capsys):
    inputs, client, ids = constructed
    rng = np.random.default_rng(0)
    float_nll = 3.0 + rng.normal(0, 0.3, 60)  # 60 windows
    for name, shift in [("compressed", 0.03), ("lucky-larger", 0.001)]:
        run_nll = float_nll + shift + rng.normal(0, 0.002, 60)
        client.log_metric(ids[name], "wikitext2_nll", float(run_nll.mean()))
        client.log_dict(ids[name], {"nll": float(float_nll.mean()), "window_nll": float_nll.tolist()}, FLOAT_PPL)
        client.log_dict(ids[name], {"nll": float(run_nll.mean()), "window_nll": run_nll.tolist()}, PPL)
    client.log_metric(ids["undecided"], "wikitext2_nll", 3.0)  # a metric but no windows logged
    assert main(["--dry-run", *inputs.tool_args(), "rule.metric=wikitext2_nll"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line[:1].isdigit()}
    assert "CHAMPION" in rows["lucky-larger"]  # the smaller run's NLL is 0.03 nats worse: shown > 0.01
    assert "fail: drop > margin" in rows["compressed"]
    assert "no per-unit scores logged (eval/wikitext2_result.json with window_nll)" in rows["undecided"]
    assert "no wikitext2_nll" in rows["drop-shown"]


def test_select_refuses_weights_that_changed_on_disk(constructed, capsys):
    inputs, client, _ = constructed
    (inputs.root / "saved" / "compressed" / WEIGHT_FILE).write_bytes(b"tampered")
    assert main(inputs.tool_args()) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("llama-quant", "champion")


def test_select_without_an_eligible_run_exits_1(constructed, capsys):
    inputs, _, _ = constructed
    assert (
        main(
            [*inputs.tool_args(), "filter=\"tags.config_hash != 'compressed' and tags.config_hash != 'lucky-larger'\""]
        )
        == 1
    )
    assert (
        "no run passes the gate (1 undecided, 1 failed, 0 without a paired float comparison)" in capsys.readouterr().out
    )


def test_select_refuses_runs_that_cannot_be_compared(constructed, capsys):
    inputs, client, _ = constructed
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    _log_job(client, experiment_id, inputs.root / "saved", "other-model", 0, 0, 0, 10, **{"model.name": "other"})
    assert main(inputs.tool_args()) == 2
    assert "the runs differ in model.name" in capsys.readouterr().err


def test_select_bad_input_is_one_line(tiny_inputs, capsys):
    assert main([*tiny_inputs.tool_args(), "tracking.experiment_name=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep.select: error: tracking.experiment_name: no experiment 'nope'")
    assert main([*tiny_inputs.tool_args(), "rule.margin=-1"]) == 2
    assert "rule.margin: invalid value -1" in capsys.readouterr().err


def test_promoted_weights_of_a_real_sweep_come_back_from_mlflow_alone(sweep8, tmp_path, capsys):
    inputs = sweep8.inputs
    parent = next(r for r in sweep8.runs() if r.data.tags.get("sweep.role") == "parent")
    # 8 BoolQ rows cannot show anything within one point: nothing passes the default gate.
    assert main(["--dry-run", f"sweep={parent.info.run_id}", *inputs.tool_args()]) == 1
    assert "no run passes the gate (7 undecided" in capsys.readouterr().out
    loose = [*inputs.tool_args(), "rule.margin=0.5"]
    assert main(["--dry-run", f"sweep={parent.info.run_id}", *loose]) == 0
    ranked_rows = [line for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert len(ranked_rows) == 7 and "CHAMPION" in ranked_rows[0]  # the sweep's 7 finished configs
    assert main(loose) == 0
    # The expected champion, computed here from the runs: passing the gate at margin 0.5, then
    # fewest float layers, then smallest output, then best accuracy, then earliest.
    jobs = [r for r in sweep8.runs() if r.data.tags.get("sweep.role") == "job" and r.info.status == "FINISHED"]

    def passes(run) -> bool:
        m = run.data.metrics
        counts = (int(m["vs_float_n_reference_only"]), int(m["vs_float_n_candidate_only"]), int(m["vs_float_n"]))
        return paired_counts(*counts, margin=0.5).upper_bound < 0.5

    eligible = [r for r in jobs if passes(r)]
    expected = min(
        eligible,
        key=lambda r: (
            r.data.metrics["float_layers"],
            r.data.metrics["size_bytes"],
            -r.data.metrics["boolq_acc"],
            r.info.start_time,
        ),
    )
    client = sweep8.client
    version = client.get_model_version_by_alias("llama-quant", "champion")
    assert version.run_id == expected.info.run_id
    capsys.readouterr()

    mlflow.set_tracking_uri(inputs.uri)
    fetched = Path(mlflow.artifacts.download_artifacts("models:/llama-quant@champion", dst_path=str(tmp_path / "dl")))
    assert _sha(fetched / WEIGHT_FILE) == expected.data.tags[f"sha256.{WEIGHT_FILE}"]
    reloaded = load_quantized(fetched)
    assert reloaded.quant_type == "W8A8"
    mlflow.set_tracking_uri("")
