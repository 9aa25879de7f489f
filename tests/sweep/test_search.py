"""Optuna search (conf/search/alpha.yaml) on the tiny model: a seeded study in a persistent storage,
4 trials, then the same command resumed for 2 more: 6 trials in one study and one MLflow sweep,
each trial's value being the selection objective of its run."""

from __future__ import annotations

import optuna
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution

from sweep.compose import compose_tool_config
from sweep.select import configured_rule, search_objective
from sweep_helpers import failure_report, parent_and_children, run_module

LEVELS = ("L0", "L1", "L2")


def _search(inputs, storage: str, n_trials: int, sweep_dir: str):
    args = [
        "-m",
        "search=alpha",
        f"disable_level=choice({','.join(LEVELS)})",  # a smaller space than the config's, for the tiny model
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.sampler.n_startup_trials=4",
        *inputs.sweep_args(),
        f"hydra.sweep.dir={sweep_dir}",  # each invocation numbers its jobs from 0: its own directory
    ]
    proc = run_module("sweep", args, cwd=inputs.root)
    assert proc.returncode == 0, failure_report(proc)
    return proc


def _seeded_proposals(n: int) -> list[dict]:
    """What a fresh TPE study with the config's seed proposes first, asked directly from Optuna."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    proposals = []
    for _ in range(n):
        trial = study.ask()
        trial._suggest("anti_method.params.alpha", FloatDistribution(0.05, 0.95))
        trial._suggest("disable_level", CategoricalDistribution(LEVELS))
        proposals.append(dict(trial.params))
    return proposals


def test_optuna_search_is_seeded_resumable_and_maximizes_the_selection_objective(tiny_inputs):
    storage = f"sqlite:///{tiny_inputs.root}/optuna.db"
    _search(tiny_inputs, storage, 4, f"{tiny_inputs.root}/search-1")
    resumed = _search(tiny_inputs, storage, 2, f"{tiny_inputs.root}/search-2")
    assert "resuming parent run" in resumed.stdout  # the same sweep, continued

    study = optuna.load_study(study_name="llama-quant-alpha", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [t.params for t in trials[:4]] == _seeded_proposals(4)
    assert len({(t.params["anti_method.params.alpha"], t.params["disable_level"]) for t in trials}) == 6

    _, children = parent_and_children(MlflowClient(tiny_inputs.uri))
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    runs = {(r.data.params["anti_method.params.alpha"], r.data.params["disable_level"]): r for r in children}
    rule = configured_rule(compose_tool_config("config", []))
    for trial in trials:
        run = runs[(str(trial.params["anti_method.params.alpha"]), trial.params["disable_level"])]
        assert trial.value == search_objective(run.data.metrics, rule)
    assert study.best_value == max(t.value for t in trials)
