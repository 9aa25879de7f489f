"""Helpers of the sweep tests: tiny inputs on disk, MLflow stores, running the CLIs as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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

    def sweep_args(self) -> list[str]:
        """Overrides that point the app at the tiny inputs and keep every output under ``root``."""
        return [
            f"model.path={self.model_dir}",
            f"calib.calib_file={self.calib}",
            f"eval.boolq.data_path={self.boolq}",
            "eval.boolq.limit=8",
            f"tracking.tracking_uri={self.uri}",
            f"tracking.artifact_root={self.root}/artifacts",
            f"cache.dir={self.root}/cache",
            f"hydra.run.dir={self.root}/run",
            f"hydra.sweep.dir={self.root}/multirun",
        ]

    def tool_args(self) -> list[str]:
        """Overrides of ``sweep.select`` / ``sweep.regress`` for the same store."""
        return [f"tracking.tracking_uri={self.uri}", f"tracking.artifact_root={self.root}/artifacts"]


def make_tiny_inputs(root: Path) -> TinyInputs:
    root.mkdir(parents=True, exist_ok=True)
    model_dir = save_tiny_model_dir(root / "tiny-llama", build_tiny_tokenizer())
    return TinyInputs(root, model_dir, write_calib_file(root / "calib.jsonl"), write_tiny_boolq(root / "boolq.jsonl"))


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
