"""A real 8-job multirun on the tiny model: parent/child runs, failure isolation, tags, shared work."""

from __future__ import annotations

import re

import pytest

from sweep.provenance import package_versions
from sweep_helpers import job_lines

N_JOBS = 8


def _children(sweep8):
    runs = sweep8.runs()
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda r: r.info.start_time)


def test_one_parent_with_one_child_per_job_and_the_forced_failure_isolated(sweep8):
    parent, children = _children(sweep8)
    assert len(sweep8.runs()) == N_JOBS + 1  # nothing logged outside the sweep's parent
    assert len(children) == N_JOBS
    assert parent.info.status == "FINISHED"
    failed = [r for r in children if r.info.status == "FAILED"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(failed) == 1 and len(finished) == N_JOBS - 1
    (bad,) = failed
    assert bad.data.tags["choice.anti_method"] == "m1" and bad.data.tags["disable_level"] == "L1"
    assert "save_directory" in bad.data.tags["error"] and "not empty" in bad.data.tags["error"]
    # Jobs after the failure ran normally.
    later = [r for r in children if r.info.start_time > bad.info.start_time]
    assert len(later) == 2 and all(r.info.status == "FINISHED" for r in later)
    assert parent.data.metrics["n_configs"] == N_JOBS
    assert parent.data.metrics["n_finished"] == N_JOBS - 1 and parent.data.metrics["n_failed"] == 1


def test_progress_lines_ranking_table_and_failure_summary(sweep8):
    out = sweep8.proc.stdout
    lines = job_lines(out)
    assert len(lines) == N_JOBS
    assert [line.split("]")[0] for line in lines] == [f"[job {i}/{N_JOBS}" for i in range(1, N_JOBS + 1)]
    assert sum("| FINISHED " in line for line in lines) == N_JOBS - 1
    (failed_line,) = [line for line in lines if "| FAILED" in line]
    assert failed_line.startswith("[job 6/8] w8a8-m1-act1-L1-boolq50-") and "not empty" in failed_line
    for line in lines:
        if "| FINISHED " in line:
            assert re.search(r"\| acc \d\.\d{4} Δ [+-]\d\.\d{4} \| \d+\.\d s \| FINISHED [0-9a-f]{8}$", line), line
    table = out[out.index("sweep ") :]
    assert f"{N_JOBS} configs, {N_JOBS - 1} finished, 1 not finished" in table
    ranked_rows = [line for line in table.splitlines() if re.match(r"^\d+\s+w8a8-", line)]
    assert len(ranked_rows) == N_JOBS - 1
    accuracies = [float(row.split()[2]) for row in ranked_rows]
    assert accuracies == sorted(accuracies, reverse=True)
    failures = out[out.index("failures:") :]
    assert "FAILED w8a8-m1-act1-L1-boolq50" in failures


def test_child_runs_carry_choices_hash_commit_versions_and_results(sweep8):
    parent, children = _children(sweep8)
    hashes = {r.data.tags["config_hash"] for r in children}
    assert len(hashes) == N_JOBS
    versions = package_versions()
    for run in children:
        tags = run.data.tags
        assert tags["sweep.key"] == parent.data.tags["sweep.key"]
        assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
        assert tags["version.torch"] == versions["version.torch"]
        assert tags["version.lm_eval"] == versions["version.lm_eval"]
        assert tags["choice.scheme"] == "w8a8" and tags["choice.anti_method"] in ("none", "m1")
        if run.info.status != "FINISHED":
            continue
        m = run.data.metrics
        assert 0.0 <= m["boolq_acc"] <= 1.0 and m["boolq_n"] == 8
        assert m["vs_float_accuracy_delta"] == pytest.approx(m["boolq_acc"] - m["float_boolq_acc"])
        assert m["size_bytes"] > 0 and m["job_s"] > 0
        artifacts = {a.path for a in sweep8.client.list_artifacts(run.info.run_id)}
        assert {"config", "quantized", "eval", "plots"} <= artifacts
        assert "model" not in artifacts  # tracking.log_weights=auto: a multirun logs only the sha256
        client = sweep8.client
        nested = {a.path for d in ("quantized", "eval", "plots") for a in client.list_artifacts(run.info.run_id, d)}
        assert {
            "quantized/quant_model_description.json",
            "quantized/quant_layer_report.json",
            "quantized/weights_sha256.json",
            "eval/boolq_result.json",
            "eval/float_boolq_result.json",
            "plots/layer_range_param.png",
        } <= nested
        assert tags["sha256.quant_model_weight_w8a8.safetensors"]


def test_shared_work_is_paid_once_and_cache_hits_are_logged(sweep8):
    _, children = _children(sweep8)
    finished = [r for r in children if r.info.status == "FINISHED"]
    outcomes = [r.data.tags["cache.float_model"] for r in finished]
    assert outcomes == ["computed"] + ["memory"] * (len(finished) - 1)
    assert [r.data.tags["cache.baseline"] for r in finished] == outcomes
    plain = [r for r in finished if r.data.tags["choice.anti_method"] == "none"]
    smoothed = [r for r in finished if r.data.tags["choice.anti_method"] == "m1"]
    # One smoothing (anti-outlier + range_param observation) per anti_method, shared by the levels.
    assert [r.data.tags["cache.smoothing"] for r in plain] == ["computed"] + ["memory"] * 3
    assert [r.data.tags["cache.smoothing"] for r in smoothed] == ["computed", "memory", "memory"]
    # One observation pass of the float model, made by the first smoothing that needed it.
    assert [r.data.tags.get("cache.observation") for r in finished] == [None] * 4 + ["computed", None, None]
    for run in finished:
        kinds = {tag.split(".")[1] for tag in run.data.tags if tag.startswith("cache.") and tag.count(".") == 1}
        assert {"float_model", "baseline", "calib_data", "smoothing"} <= kinds
        hits = [k for k in kinds if run.data.tags.get(f"cache.{k}") in ("memory", "disk")]
        assert run.data.metrics["cache_hits"] == len(hits)
    # The observation is on disk under its content key, for the next process.
    key = smoothed[0].data.tags["cache.observation.key"]
    assert (sweep8.inputs.root / "cache" / "observation" / key / "input_stats.pt").is_file()


def test_parent_run_holds_the_summary_and_plots(sweep8):
    parent, _ = _children(sweep8)
    client = sweep8.client
    paths = {a.path for d in ("summary", "plots") for a in client.list_artifacts(parent.info.run_id, d)}
    assert {"summary/ranking.txt", "summary/runs.csv", "plots/pareto.png", "plots/grid_boolq_acc.png"} <= paths
    tags = parent.data.tags
    assert tags["sweep.n_jobs"] == str(N_JOBS)
    assert "anti_method=none,m1" in tags["sweep.overrides"]
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
