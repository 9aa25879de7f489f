"""What ``python -m sweep`` checks before Hydra starts a run: the command line composes, and the
composed job's inputs are valid. Nothing is written and no model is loaded, so a mistake costs
well under 5 seconds and leaves no output directory or MLflow run behind.

A single run checks its one job. A multirun composes one job per value of every axis (not the
whole product) and stops only when every one of them fails: a bad value on one axis is a FAILED
job of the sweep, as before, while a mistake shared by all jobs is reported once, up front.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from quant.errors import QuantInputError
from sweep.compose import CONF_DIR, hydra_input_error
from sweep.hydra_config import quant_config_from_hydra
from sweep.inputs import check_sweep_inputs, log_weights_policy

CONFIG_NAME = "config"


def preflight(argv: Sequence[str]) -> None:
    """Raise :class:`QuantInputError` (one line: key and valid values) when the command line
    ``argv`` of ``python -m sweep`` cannot run; return quietly for Hydra's own commands
    (``--help``, ``--cfg``, ``--info``, ...), which Hydra handles."""
    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return
    if args.config_path or args.config_dir or args.experimental_rerun:
        return  # another config tree: Hydra composes it and reports its errors
    config_name = args.config_name or CONFIG_NAME
    overrides = list(args.overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="app"):
        if not args.multirun:
            check_job(_compose(config_name, overrides, multirun=False))
            return
        errors = []
        jobs = list(representative_jobs(config_name, overrides))
        for job_overrides in jobs:
            cfg = _compose(config_name, job_overrides, multirun=True)
            try:
                check_job(cfg)
            except QuantInputError as exc:
                errors.append(exc)
        if jobs and len(errors) == len(jobs):
            raise errors[0]


def check_job(cfg: DictConfig) -> None:
    """The sweep's inputs (evaluation, data and model files) and the recipe of one composed job."""
    try:
        check_sweep_inputs(cfg)
        quant_config_from_hydra(cfg)
        log_weights_policy(cfg, multirun=False)
    except OmegaConfBaseException as exc:  # a value that does not resolve (missing, bad interpolation)
        raise hydra_input_error(exc) from None


def representative_jobs(config_name: str, overrides: list[str]) -> Iterator[list[str]]:
    """Override lists of jobs that together use every value of every sweep axis (command line and
    ``hydra.sweeper.params``) at least once; the fixed overrides alone for a non-basic sweeper."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in _parse(parser, overrides) if not o.is_sweep_override()]
    master = _compose(config_name, fixed, multirun=True)
    if not str(master.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        yield fixed
        return
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
    try:
        (batch,) = BasicSweeper.split_arguments(_parse(parser, [*params, *overrides]), None)
    except HydraException as exc:
        raise hydra_input_error(exc) from None
    covered: set[str] = set()
    for job in batch:
        if not covered.issuperset(job):
            covered.update(job)
            yield job


def _parse(parser: OverridesParser, overrides: list[str]) -> list:
    try:
        return parser.parse_overrides(overrides)
    except HydraException as exc:
        raise hydra_input_error(exc) from None


def _compose(config_name: str, overrides: list[str], multirun: bool) -> DictConfig:
    """The job's config as Hydra will compose it, with the ``hydra:`` interpolations it will see
    (``runtime.output_dir`` of a single run is its ``hydra.run.dir``)."""
    try:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            run_dir = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
            cfg.hydra.runtime.output_dir = os.path.abspath(str(run_dir))
    except (HydraException, OmegaConfBaseException) as exc:
        raise hydra_input_error(exc, _keys_beside(config_name, overrides, exc)) from None
    HydraConfig.instance().set_config(cfg)
    return cfg


def _keys_beside(config_name: str, overrides: list[str], exc: Exception) -> list[str] | None:
    """For an override of a key that does not exist: the keys that do exist at its place."""
    key = getattr(exc.__cause__, "full_key", None)
    if not key:
        return None
    others = [o for o in overrides if o.lstrip("+~").split("=")[0] != key]
    parent = key.rpartition(".")[0]
    try:
        cfg = compose(config_name, overrides=others)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except (HydraException, OmegaConfBaseException):
        return None
    return [str(k) for k in node] if isinstance(node, DictConfig) else None
