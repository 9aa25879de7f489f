"""Fixtures of the sweep tests: a migrated MLflow store template, one real 8-job sweep that
several test modules inspect (run once per session: it takes about a minute), and the serial
smoke sweep that the launcher tests compare their parallel runs with."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweep_helpers import (
    EXPERIMENT,
    TinyInputs,
    failure_report,
    fresh_outputs,
    init_store,
    make_tiny_inputs,
    run_module,
)

FAILING_JOB = 5  # 0-based Hydra job number whose save_directory is blocked in the 8-job sweep


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    init_store(db)
    return db


@pytest.fixture()
def tiny_inputs(tmp_path, mlflow_template) -> TinyInputs:
    """Tiny model, calibration and BoolQ files, and an empty MLflow store, under ``tmp_path``."""
    inputs = make_tiny_inputs(tmp_path)
    shutil.copyfile(mlflow_template, inputs.db)
    return inputs


@dataclass
class SweepOutcome:
    inputs: TinyInputs
    proc: subprocess.CompletedProcess

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.inputs.uri)

    def runs(self):
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        return self.client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="session")
def sweep8(tmp_path_factory, mlflow_template) -> SweepOutcome:
    """``anti_method=none,m1 × disable_level=L0..L3`` on the tiny model; job 5 (m1, L1) is forced to
    fail: its save_directory already holds someone else's file."""
    inputs = make_tiny_inputs(tmp_path_factory.mktemp("sweep8"))
    shutil.copyfile(mlflow_template, inputs.db)
    blocker = inputs.root / "multirun" / str(FAILING_JOB) / "quantized" / "not-mine.txt"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("another tool's output\n")
    args = ["-m", "anti_method=none,m1", "disable_level=L0,L1,L2,L3", *inputs.sweep_args()]
    proc = run_module("sweep", args, cwd=inputs.root)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]  # a job failed: exit 1, for CI
    return SweepOutcome(inputs, proc)


@pytest.fixture(scope="session")
def shared_inputs(tmp_path_factory) -> TinyInputs:
    """Tiny model and data for the launcher tests; each sweep writes its outputs elsewhere."""
    return make_tiny_inputs(tmp_path_factory.mktemp("shared-inputs"))


@pytest.fixture(scope="session")
def serial_smoke(shared_inputs, tmp_path_factory, mlflow_template) -> SweepOutcome:
    """The smoke grid (anti_method none, m1 × disable_level L0, L1) run in one process by Hydra's
    basic launcher: what every other launcher must reproduce."""
    inputs = fresh_outputs(shared_inputs, tmp_path_factory.mktemp("serial-smoke"), mlflow_template)
    proc = run_module("sweep", ["-m", "grid=smoke", *inputs.sweep_args()], cwd=inputs.root)
    assert proc.returncode == 0, failure_report(proc)
    return SweepOutcome(inputs, proc)
