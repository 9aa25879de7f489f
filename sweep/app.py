"""``python -m sweep``: the Hydra app over ``conf/``; one job per composed recipe.

:func:`cli` first runs :func:`sweep.preflight.preflight` (the command line composes, the job's inputs
are valid: one line and exit 2 otherwise, before any model load or output), then Hydra, whose own
errors also end as one line and exit 2. What each job does is :func:`sweep.task.run_task`.
Exit codes: 0 done; 1 a single run's job failed, or some job of a multirun did not finish; 2 bad input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from quant.errors import QuantInputError
from sweep.compose import REPO_ROOT, hydra_input_error
from sweep.preflight import preflight

EXIT_BAD_INPUT = 2
EXIT_JOB_FAILED = 1  # a single run's job failed, or a multirun's job did not finish


def cli(argv: Sequence[str] | None = None) -> None:
    """``python -m sweep``: check the command line and the job's inputs (no model, nothing written),
    then hand over to Hydra. Any bad input, Hydra's own errors included, ends as one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        preflight(argv)
    except QuantInputError as exc:
        _exit_bad_input(exc)
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors instead of printing them over lines
    try:
        main()
    except (HydraException, OmegaConfBaseException) as exc:
        if user_wants_traceback:
            raise
        _exit_bad_input(hydra_input_error(exc))


def _exit_bad_input(exc: QuantInputError) -> None:
    print(f"sweep: error: {exc}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


@hydra.main(config_path=str(REPO_ROOT / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One job of the sweep (:func:`sweep.task.run_task`); returns its selection objective."""
    from sweep.task import run_task  # torch, transformers, MLflow: imported once the preflight has passed

    return run_task(cfg)
