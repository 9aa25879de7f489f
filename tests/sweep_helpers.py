"""Helpers of the sweep tests: tiny inputs on disk, MLflow stores, running the CLIs as subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tiny_data import save_tiny_model_dir, write_calib_file, write_tiny_boolq
from tiny_models import build_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "llama-quant"


@dataclass(frozen=True)
class TinyInputs:
    """What a tiny sweep reads and where it writes."""

    root: Path
    model_dir: Path
    calib: Path
    boolq: Path

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.db}"

    @property
    def artifacts(self) -> Path:
        """Where the store's runs keep their artifacts (an experiment's artifact location)."""
        return self.root / "artifacts"

    def sweep_args(self, local_store: bool = True) -> list[str]:
        """Overrides that point the app at the tiny inputs and keep every output under ``root``
        (the MLflow store too, unless ``local_store`` is false: then the caller chooses it)."""
        store = [f"tracking.tracking_uri={self.uri}", f"tracking.artifact_root={self.artifacts}"]
        return [
            f"model.path={self.model_dir}",
            f"calib.calib_file={self.calib}",
            f"eval.boolq.data_path={self.boolq}",
            "eval.boolq.limit=8",
            *(store if local_store else []),
            f"cache.dir={self.root}/cache",
            f"hydra.run.dir={self.root}/run",
            f"hydra.sweep.dir={self.root}/multirun",
        ]

    def elsewhere(self, root: Path) -> TinyInputs:
        """The same model and data files, with every output (store, cache, sweep dir) under ``root``."""
        root.mkdir(parents=True, exist_ok=True)
        return TinyInputs(root, self.model_dir, self.calib, self.boolq)

    def tool_args(self) -> list[str]:
        """Overrides of ``sweep.select`` / ``sweep.regress`` for the same store."""
        return [f"tracking.tracking_uri={self.uri}", f"tracking.artifact_root={self.artifacts}"]


def make_tiny_inputs(root: Path) -> TinyInputs:
    root.mkdir(parents=True, exist_ok=True)
    model_dir = save_tiny_model_dir(root / "tiny-llama", build_tiny_tokenizer())
    return TinyInputs(root, model_dir, write_calib_file(root / "calib.jsonl"), write_tiny_boolq(root / "boolq.jsonl"))


def fresh_outputs(inputs: TinyInputs, root: Path, mlflow_template: Path) -> TinyInputs:
    """``inputs`` with an empty MLflow store (a copy of ``mlflow_template``), cache and sweep
    directory under ``root``."""
    moved = inputs.elsewhere(root)
    shutil.copyfile(mlflow_template, moved.db)
    return moved


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


def run_module(module: str, args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def init_store(db: Path) -> None:
    """Create an empty, fully migrated MLflow SQLite store (about 10 s; tests copy a template)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{db}").search_experiments()


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, as paths relative to its artifact root."""
    found: set[str] = set()
    for entry in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


# The numbers of a job that must not depend on where it ran.
RESULT_METRICS = ("boolq_acc", "float_boolq_acc", "vs_float_accuracy_delta", "vs_float_flip_rate", "vs_float_mean_kl")


def parent_and_children(client: MlflowClient, experiment: str = EXPERIMENT) -> tuple[Run, list[Run]]:
    """The experiment's one parent run and its child runs (asserts there is exactly one parent)."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == len(children) + 1, "runs outside the sweep's parent"
    return parents[0], children


def _not_cache(metrics: dict[str, float]) -> set[str]:
    return {name for name in metrics if not name.startswith(("cache_", "cache.", "time_"))}


def assert_same_results(client: MlflowClient, runs: list[Run], ref_client: MlflowClient, reference: list[Run]) -> None:
    """Each run has the same weights (sha256), result metrics, set of metrics and params, and
    artifact files as the reference run of the same name: nothing lost, nothing different.

    Cache metrics (``cache_*``, ``cache.*``) and stage timings (``time_*``, logged only for the
    stages a job computed itself) are left out of the comparison: which shared work a job finds
    already done depends on which jobs ran before it in the same process."""
    by_name = {r.info.run_name: r for r in reference}
    for run in runs:
        ref = by_name[run.info.run_name]
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("error"))
        sha = {k: v for k, v in run.data.tags.items() if k.startswith("sha256.")}
        assert sha and sha == {k: v for k, v in ref.data.tags.items() if k.startswith("sha256.")}
        assert {m: run.data.metrics[m] for m in RESULT_METRICS} == {m: ref.data.metrics[m] for m in RESULT_METRICS}
        assert _not_cache(run.data.metrics) == _not_cache(ref.data.metrics)
        assert set(run.data.params) == set(ref.data.params)
        assert artifact_paths(client, run.info.run_id) == artifact_paths(ref_client, ref.info.run_id)


def job_lines(stdout: str) -> list[str]:
    """The sweep's one-line-per-job progress output."""
    return [line for line in stdout.splitlines() if line.startswith("[job ")]


def boolq_result_dict(correct: list[bool], data_path: str = "/data/boolq.jsonl", limit: int | None = None) -> dict:
    """A BoolQResult.to_dict() with one row per entry of ``correct`` (gold alternates yes/no)."""
    rows = []
    for i, ok in enumerate(correct):
        gold = i % 2
        pred = gold if ok else 1 - gold
        ll_yes, ll_no = (-0.5, -1.5) if pred == 1 else (-1.5, -0.5)
        rows.append({"index": i, "gold": gold, "ll_yes": ll_yes, "ll_no": ll_no, "pred": pred, "correct": ok})
    accuracy = sum(correct) / len(correct)
    config = {"data_path": data_path, "data_sha256": "0" * 64, "limit": limit, "seed": None, "batch_size": 8}
    return {"accuracy": accuracy, "stderr": None, "n": len(rows), "per_example": rows, "config": config}


def write_json(path: Path, payload: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def fake_check(champion: list[bool], correct: list[bool], margin: float = 0.05):
    """A recipe check of a candidate with per-example ``correct`` against a champion with
    ``champion`` (both as :func:`boolq_result_dict`), gated with ``margin``; nothing evaluated."""
    from omegaconf import OmegaConf

    from eval.boolq import BoolQResult
    from sweep.regress import Check, Side, gate

    reference = BoolQResult.from_dict(boolq_result_dict(champion))
    candidate = BoolQResult.from_dict(boolq_result_dict(correct))
    comparison, verdict = gate(reference, candidate, OmegaConf.create({"margin": margin, "alpha": 0.05}))
    reference_side = Side("llama-quant version 1 (run 1a2b3c4d)", reference)
    candidate_side = Side("rebuilt with today's code", candidate)
    return Check(
        "recipe",
        "0123456789abcdef",
        "w8a8-m1-act1-L0-boolq50",
        reference_side,
        candidate_side,
        comparison,
        verdict,
        "1a2b3c4d" * 4,
        "llama-quant",
        "1",
        True,
    )


def fake_origin(commit: str, torch_version: str) -> dict[str, str]:
    """Provenance tags of a check made at ``commit`` (repeated to 40 characters) with ``torch_version``."""
    return {
        "git_commit": (commit * 40)[:40],
        "git_dirty": "false",
        "version.torch": torch_version,
        "version.transformers": "4.57.1",
        "version.lm_eval": "0.4.9",
        "version.llama-quant-harness": "0.1.0",
    }


def failure_report(proc: subprocess.CompletedProcess, tail: int = 1500) -> str:
    """What explains a failed CLI run, for an assertion message: the sweep's own summary and error
    lines, the last traceback of stderr, then the plain tails (a launcher such as Ray forwards its
    workers' logs after the summary, so a bare tail can hide the reason)."""
    out, err = proc.stdout or "", proc.stderr or ""
    own = [
        line
        for line in (out + "\n" + err).splitlines()
        if line.startswith(("sweep", "  ", "failures:", "job ")) or "error:" in line or "FAILED" in line
    ]
    start = err.rfind("Traceback (most recent call last)")
    traceback_text = err[start : start + 6000] if start >= 0 else ""
    return "\n".join(
        [
            f"exit {proc.returncode}",
            *own[-80:],
            traceback_text,
            "--- stdout tail",
            out[-tail:],
            "--- stderr tail",
            err[-tail:],
        ]
    )
