"""A real regression history on SmolLM2-135M: a champion, three ``sweep.regress --recipe`` checks of
it (two with today's code, one with a planted quantizer change), then ``sweep.regress --history``.

The champion is one sweep job (W8A8, ``--anti-method``, act_method 1, the reference's 50 BoolQ
calibration texts, BoolQ on the first ``--boolq-n`` validation rows), promoted to
``llama-quant@champion``. Checks 1 and 2 run the real CLI in a subprocess. Check 3 runs the same
CLI entry point in this process with the quantizer's symmetric range shrunk to ``--plant-factor``
of the observed one (a planted observer bug: values clip), so its rebuilt weights differ.

    QUANT_DATA_DIR=../shared/data python -m benchmarks.regress_history --boolq-n 100 --margin 0.05

The gate's default metric here is the gold answer's log-likelihood (nats): SmolLM2-135M answers
BoolQ below the majority baseline (~0.4), so a broken model drifting to "yes" can *raise* accuracy;
the log-likelihood of the right answer falls whichever way the answers drift.

Writes ``benchmarks/results/regress_history.{json,md}`` and the history plot
``benchmarks/results/regress_history.png``; the MLflow store stays under ``--workdir``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

import quant.quantizers
from benchmarks.common import DATA, REPO_ROOT, RESULTS, Figure, write_result
from sweep import regress
from sweep.registry import promote
from sweep.run_records import RunRecord

EXPERIMENT = "llama-quant"
PLOT = RESULTS / "regress_history.png"


def _env() -> dict[str, str]:
    return {**os.environ, "QUANT_DATA_DIR": str(DATA), "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}


def _run(module: str, args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, text=True, check=False)


def _start(args: list[str], workdir: Path) -> subprocess.Popen:
    """``python <args>`` started in the background, stdout captured (stderr: progress, dropped)."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _champion(workdir: Path, store: list[str], boolq_n: int, anti_method: str) -> str:
    """One sweep job, promoted to champion; returns its run id. A finished job already in the
    workdir's store (an earlier, interrupted invocation) is reused."""
    uri = store[0].split("=", 1)[1]
    mlflow.set_tracking_uri(uri)  # MLflow's registry resolves models:/ sources on the global store
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    done = (
        [] if experiment is None else client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    )
    if done:
        promote(client, RunRecord.from_run(done[0]), "llama-quant", "champion")
        return done[0].info.run_id
    args = [
        f"anti_method={anti_method}",
        "act_method=1",
        f"eval.boolq.limit={boolq_n}",
        "eval.float_baseline=false",
        "tracking.log_weights=true",
        *store,
        f"hydra.run.dir={workdir}/champion",
        f"cache.dir={workdir}/cache",
    ]
    proc = _run("sweep", args, workdir)
    if proc.returncode != 0:
        raise SystemExit(f"champion job failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    promote(client, RunRecord.from_run(run), "llama-quant", "champion")
    return run.info.run_id


def _planted_check(argv: list[str], factor: float) -> int:
    """``sweep.regress`` with every symmetric quantization range scaled by ``factor``."""
    original = quant.quantizers.symmetric_params
    quant.quantizers.symmetric_params = lambda amax, bits: original(amax * factor, bits)
    try:
        return regress.main(argv)
    finally:
        quant.quantizers.symmetric_params = original


def main() -> None:
    if sys.argv[1:2] == ["--planted-check"]:  # internal: one planted check, in a process of its own
        raise SystemExit(_planted_check(sys.argv[4:], float(sys.argv[2])))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boolq-n", type=int, default=200, help="BoolQ rows of the champion (and every check)")
    parser.add_argument("--metric", default="boolq_gold_ll", help="the gate's metric (sweep.regress `metric`)")
    parser.add_argument("--margin", type=float, default=0.05, help="the gate's margin, in the metric's units")
    parser.add_argument("--anti-method", default="none", help="the champion's anti_method (none: fastest)")
    parser.add_argument("--plant-factor", type=float, default=0.25, help="planted change: range scale factor")
    parser.add_argument("--workdir", type=Path, default=None, help="MLflow store and outputs (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="regress-history-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = [f"tracking.tracking_uri=sqlite:///{workdir}/mlflow.db", f"tracking.artifact_root={workdir}/artifacts"]
    check_args = ["--recipe", "champion", *store, f"metric={args.metric}", f"margin={args.margin}"]

    started = time.perf_counter()
    champion = _champion(workdir, store, args.boolq_n, args.anti_method)
    champion_s = time.perf_counter() - started
    print(f"champion run {champion} ({champion_s:.0f} s)", flush=True)
    # The three checks run at once (each a process of its own: on a shared machine that is three
    # shares of the CPU); each records its own run, the history orders them by when they finished.
    labels = ["today's code", "today's code, again", f"planted: symmetric ranges x {args.plant_factor}"]
    planted = ["-m", "benchmarks.regress_history", "--planted-check", str(args.plant_factor), "--", *check_args]
    commands = [["-m", "sweep.regress", *check_args]] * 2 + [planted]
    t0 = time.perf_counter()
    procs = [_start(command, workdir) for command in commands]
    checks = []
    for label, proc in zip(labels, procs):
        out, _ = proc.communicate()
        checks.append((label, proc.returncode, time.perf_counter() - t0, out))
        print(f"check ({label}): exit {proc.returncode}\n{out[-3000:]}", flush=True)
    history = _run("sweep.regress", ["--history", "--plot", str(PLOT), *store], workdir)
    if history.returncode != 0:
        raise SystemExit(history.stderr[-2000:])
    print(history.stdout)

    table = "\n".join(f"| {i + 1} | {label} | {code} | {s:.0f} |" for i, (label, code, s, _) in enumerate(checks))
    extra = "\n".join(
        [
            "| check | code | exit | wall s (from the start of all three) |",
            "|---|---|---:|---:|",
            table,
            "",
            "`python -m sweep.regress --history`, as printed:",
            "",
            "```",
            history.stdout.strip(),
            "```",
            "",
            f"![history]({PLOT.name})",
        ]
    )
    write_result(
        "regress_history",
        "Regression history on SmolLM2-135M (sweep.regress --recipe champion, three checks)",
        {
            "model": "SmolLM2-135M-Instruct Q4_1 GGUF",
            "recipe": f"W8A8, anti_method {args.anti_method}, act_method 1, calibration boolq50",
            "BoolQ rows": args.boolq_n,
            "gate metric": args.metric,
            "margin": args.margin,
            "alpha": 0.05,
            "planted change": f"quant.quantizers.symmetric_params(amax * {args.plant_factor}, bits)",
            "workdir": str(workdir),
        },
        [Figure("check wall time", [s for _, _, s, _ in checks], unit="s"), Figure("champion job", [champion_s], "s")],
        notes=[
            "Checks 1 and 2 run `python -m sweep.regress --recipe champion` on the unchanged code; check 3 "
            "calls the same entry point with the planted change patched into its process. The three run "
            "concurrently (one process each), so their wall times overlap.",
            "Every check rebuilds the champion's logged recipe from scratch (no cache) and evaluates it on the "
            "champion's BoolQ rows; the exit codes are sweep.regress's (0 pass, 1 regression, 3 cannot decide).",
        ],
        extra_markdown=extra,
        raw={"champion_run": champion, "checks": [{"label": c[0], "exit": c[1], "seconds": c[2]} for c in checks]},
    )


if __name__ == "__main__":
    main()
