"""Job and sweep identity (config hash, sweep key), the named grids' sizes, run bookkeeping."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from hydra.utils import get_class
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

import sweep.app  # noqa: F401  (registers the repo_root resolver the configs use)
from quant.export import RECIPE_FILE
from sweep.callbacks import count_jobs
from sweep.compose import CONF_DIR
from sweep.provenance import config_hash, sweep_key
from sweep.run_owner import process_start
from sweep.shared_work import path_identity
from sweep.stale_runs import OUTPUT_TAG, reap_stale_runs
from sweep.store import WorkStore
from sweep.tracking import tracked_run


def _compose(overrides: list[str]):
    """A single job's config, as the task function sees it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _hash(cfg) -> str:
    """The job's config hash as the task computes it (a fresh store: the model hashed again)."""
    return config_hash(cfg, path_identity(WorkStore(None), str(cfg.model.path)))


def test_config_hash_ignores_where_results_go_and_follows_what_defines_them(tiny_model_dir):
    base = [f"model.path={tiny_model_dir}"]
    reference = _hash(_compose(base))
    volatiles = ["tracking.experiment_name=other", "cache.dir=/elsewhere", "resume=false", "overwrite=true"]
    volatiles.append("quiet=true")
    for volatile in volatiles:
        assert _hash(_compose([*base, volatile])) == reference, volatile
    for change in ("act_method=2", "disable_level=L1", "eval.boolq.limit=50", "anti_method.params.alpha=0.6"):
        assert _hash(_compose([*base, change])) != reference, change
    assert _hash(_compose([*base, "anti_method=none"])) != reference


def test_config_hash_follows_the_model_s_bytes_not_its_path_or_mtime(tiny_model_dir, tmp_path):
    base = [f"model.path={tiny_model_dir}"]
    reference = _hash(_compose(base))
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copied-model")  # new path, new mtimes, same bytes
    assert _hash(_compose([f"model.path={copy}"])) == reference
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    assert _hash(_compose([f"model.path={copy}"])) != reference
    gone = _compose([f"model.path={tmp_path / 'no-model'}"])
    assert _hash(gone) != _hash(_compose([f"model.path={tmp_path / 'other-missing'}"]))  # keyed by path


def test_sweep_key_is_order_free_and_follows_the_axes():
    key = sweep_key("config", ["a=1,2", "b=x"], {"c": "1,2"})
    assert sweep_key("config", ["b=x", "a=1,2"], {"c": "1,2"}) == key
    assert sweep_key("config", ["a=1,2", "b=y"], {"c": "1,2"}) != key
    assert sweep_key("config", ["a=1,2", "b=x"], {"c": "1,2,3"}) != key
    # Where the jobs run is not what they compute: a sweep resumed on another launcher is the same sweep.
    assert sweep_key("config", ["a=1,2", "launcher=joblib", "b=x"], {"c": "1,2"}) == key
    assert sweep_key("config", ["+launcher=ray", "a=1,2", "b=x"], {"c": "1,2"}) == key


PLACEMENTS = ["launcher=joblib", "launcher=submitit_local", "launcher=slurm", "launcher=ray"]


@pytest.mark.parametrize("choice", [*PLACEMENTS, "search=alpha", "search=m6"])
def test_launcher_and_search_configs_compose_onto_installed_plugins(choice):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[choice], return_hydra_config=True)
    plugin = cfg.hydra.sweeper if choice.startswith("search=") else cfg.hydra.launcher
    assert issubclass(get_class(plugin._target_), Sweeper if choice.startswith("search=") else Launcher)


@pytest.mark.parametrize("choice", ["launcher=joblib", "launcher=ray", "tracking=server"])
def test_where_jobs_run_and_log_is_not_part_of_the_config_hash(choice, tiny_model_dir):
    base = [f"model.path={tiny_model_dir}"]
    assert _hash(_compose([*base, choice])) == _hash(_compose(base))


@pytest.mark.parametrize(
    ("grid", "extra", "jobs"),
    [
        ("mission", [], 6 * 3 * 6),
        ("economy12", [], 12),
        ("smoke", [], 4),
        ("alpha", [], 7 * 2),
        ("schemes", [], 8),
        ("calib_sets", [], 8),
        ("smoke", ["act_method=1,2,3"], 12),
        ("mission", ["anti_method=none,m1,m2,m3,m4,m5,m6"], 7 * 3 * 6),  # the command line wins
    ],
)
def test_named_grids_compose_to_the_declared_number_of_jobs(grid, extra, jobs):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # What the callback receives: the multirun config, sweep overrides not yet expanded.
        cfg = GlobalHydra.instance().hydra.compose_config("config", [f"grid={grid}", *extra], run_mode=RunMode.MULTIRUN)
    assert count_jobs(cfg) == jobs


def test_tracked_run_marks_an_interrupted_job_killed(tiny_inputs):
    mlflow.set_tracking_uri(tiny_inputs.uri)
    experiment_id = mlflow.create_experiment("e", artifact_location=tiny_inputs.artifacts.as_uri())
    with pytest.raises(KeyboardInterrupt), tracked_run(experiment_id, "interrupted") as run:
        raise KeyboardInterrupt("signal 15")
    finished = MlflowClient(tiny_inputs.uri).get_run(run.info.run_id)
    assert finished.info.status == "KILLED" and finished.data.tags["error"] == "KeyboardInterrupt: signal 15"
    mlflow.set_tracking_uri("")


def test_reap_marks_only_runs_of_dead_processes_on_this_host_killed(tiny_inputs):
    """Any role, any sweep: a RUNNING run whose owner (this host) is gone, or whose pid now belongs
    to another process (start time differs), is KILLED; live and other hosts' runs are left alone."""
    client = MlflowClient(tiny_inputs.uri)
    experiment_id = client.create_experiment("e", artifact_location=tiny_inputs.artifacts.as_uri())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = dead.stdout.strip()

    def job(pid: str, host: str, role: str = "job", **extra: str) -> str:
        tags = {"sweep.key": "k", "sweep.role": role, "sweep.pid": pid, "sweep.host": host, **extra}
        return client.create_run(experiment_id, tags=tags).info.run_id

    here = socket.gethostname()
    orphan = job(dead_pid, here)
    alive = job(str(os.getpid()), here, **{"sweep.pid_start": process_start(os.getpid())})
    remote = job(dead_pid, "another-host")
    dead_parent = job(dead_pid, here, role="parent")
    reused_pid = job(str(os.getpid()), here, **{"sweep.pid_start": "1"})  # same pid, another process
    assert set(reap_stale_runs(client, experiment_id)) == {orphan, dead_parent, reused_pid}
    statuses = {r: client.get_run(r).info.status for r in (orphan, alive, remote, dead_parent, reused_pid)}
    killed, running = "KILLED", "RUNNING"
    assert statuses == {orphan: killed, alive: running, remote: running, dead_parent: killed, reused_pid: killed}
    assert "killed" in client.get_run(orphan).data.tags["error"]


def test_run_names_tell_configs_apart(tiny_model_dir):
    """Configs that differ beyond the short axes (a quant.* setting, a model) get different names,
    and the readable part names the overridden setting."""
    from sweep.task import run_name

    base = [f"model.path={tiny_model_dir}", "anti_method=none", "eval.boolq.limit=50"]
    variants = [
        base,
        [*base, "quant.disable_last_linear=false"],
        [*base, "quant.disable_threshold=2"],
        [*base, "eval.boolq.limit=20"],
        [*base, "calib=teacher_qualification"],
    ]
    names = []
    for overrides in variants:
        cfg = _compose(overrides)
        choices = {"scheme": "w8a8", "anti_method": "none", "calib": str(cfg.calib.name)}
        names.append(run_name(cfg, choices, overrides, _hash(cfg)))
    assert len(set(names)) == len(names), names
    assert names[0].startswith("w8a8-none-act1-L0-boolq50-")
    assert names[1].startswith("w8a8-none-act1-L0-boolq50[quant.disable_last_linear=false]-")


def test_leftovers_of_a_killed_run_go_and_other_files_stay(tiny_inputs):
    """A reaped run's own output (a recipe written after it started) and export temporaries are
    removed; a directory with another tool's files, or an output a FINISHED run owns, is kept."""
    client = MlflowClient(tiny_inputs.uri)
    experiment_id = client.create_experiment("e", artifact_location=tiny_inputs.artifacts.as_uri())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    def killed_run_writing(directory: Path, recipe: bool) -> str:
        tags = {"sweep.pid": dead.stdout.strip(), "sweep.host": socket.gethostname(), OUTPUT_TAG: str(directory)}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        directory.mkdir(parents=True)
        (directory / (RECIPE_FILE if recipe else "not-mine.txt")).write_text("{}")
        return run_id

    own = tiny_inputs.root / "a" / "quantized"
    killed_run_writing(own, recipe=True)
    (own.parent / ".quantized.tmp-x1").mkdir()
    foreign = tiny_inputs.root / "b" / "quantized"
    killed_run_writing(foreign, recipe=False)
    shared = tiny_inputs.root / "c" / "quantized"
    killed_run_writing(shared, recipe=True)
    client.set_terminated(client.create_run(experiment_id, tags={OUTPUT_TAG: str(shared)}).info.run_id)
    assert len(reap_stale_runs(client, experiment_id)) == 3
    assert not own.exists() and not (own.parent / ".quantized.tmp-x1").exists()
    assert (foreign / "not-mine.txt").is_file() and (shared / RECIPE_FILE).is_file()
