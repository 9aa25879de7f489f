"""``python -m sweep.analyze``: per-linear sensitivity of one recipe, ranked, logged to MLflow.

Quantizes every linear but lm_head once (one calibration), then scores each linear alone
(``mode``, :mod:`sweep.sensitivity`) by the KL of the next-token distributions against the float
model on the first ``sensitivity_blocks`` blocks of the token set, next to the SQNR the quantizer
reports for it. Logs a run (``analyze-<setting>``) with ``sensitivity/ranking.json``,
``sensitivity/table.txt`` and ``plots/sensitivity.png``, and prints the table.

Exit codes: 0 done, 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import mlflow
from omegaconf import DictConfig, OmegaConf

from quant.arch import LM_HEAD, linear_names
from quant.errors import QuantInputError, invalid_value
from sweep.app import REPO_ROOT  # noqa: F401  (registers the ${repo_root:} resolver of conf/)
from sweep.compose import compose_tool_config
from sweep.sensitivity import MODES, LayerSensitivity, layer_sensitivity, sensitivity_figure, sensitivity_table
from sweep.tracking import flatten, setup_experiment, tracked_run
from sweep.workbench import Setting, Workbench

EXIT_BAD_INPUT = 2
RANKING_ARTIFACT = "sensitivity/ranking.json"


def ranked_linears(bench: Workbench, setting: Setting, mode: str, n_blocks: int) -> list[LayerSensitivity]:
    """The sensitivity ranking of every quantizable linear under ``setting``, most sensitive first."""
    if mode not in MODES:
        raise invalid_value("mode", mode, MODES)
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= bench.blocks.n_blocks:
        valid = f"an integer in [1, tokens.n_blocks={bench.blocks.n_blocks}]"
        raise invalid_value("sensitivity_blocks", n_blocks, valid)
    qcfg = bench.recipe(setting, float_linears=[])
    result = bench.quantized(qcfg)
    smoothed, _ = bench.smoothed(qcfg)
    names = [r.name for r in result.layers if r.name != LM_HEAD and r.name not in result.float_layers]
    sqnr = {r.name: r.sqnr_db for r in result.layers}
    return layer_sensitivity(smoothed, result.model, names, bench.reference, range(n_blocks), mode, sqnr)


def log_ranking(rows: Sequence[LayerSensitivity], mode: str, module_order: Sequence[str]) -> None:
    """The ranking into the active MLflow run: JSON, text table, plot."""
    ranking = {"mode": mode, "rows": [r.to_dict() for r in rows], "module_order": list(module_order)}
    mlflow.log_dict(ranking, RANKING_ARTIFACT)
    mlflow.log_text(sensitivity_table(rows, mode), "sensitivity/table.txt")
    mlflow.log_figure(sensitivity_figure(rows, mode, module_order), "plots/sensitivity.png")


def analyze(cfg: DictConfig) -> list[LayerSensitivity]:
    """Run the analysis of ``cfg`` and log it; returns the ranking."""
    setting = Setting(str(cfg.anti_method.name), int(cfg.act_method))
    mode = str(cfg.mode)
    if mode not in MODES:
        raise invalid_value("mode", mode, MODES)
    tracking = cfg.tracking
    experiment_id = setup_experiment(tracking.tracking_uri, tracking.experiment_name, tracking.artifact_root)
    bench = Workbench.open(cfg)
    rows = ranked_linears(bench, setting, mode, int(cfg.sensitivity_blocks))
    with tracked_run(experiment_id, f"analyze-{setting.label}", {"sweep.role": "analysis"}):
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_dict(bench.blocks.config, "sensitivity/tokens.json")
        log_ranking(rows, mode, linear_names(bench.loaded.model))
    print(sensitivity_table(rows, mode))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/analyze.yaml")
    args = parser.parse_args(argv)
    try:
        analyze(compose_tool_config("analyze", args.overrides))
    except QuantInputError as exc:
        print(f"sweep.analyze: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
