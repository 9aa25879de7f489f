"""What a sweep saves: the same 12-config grid on SmolLM2 as one sweep vs as 12 separate processes.

    python -m benchmarks.sweep_economy [--out DIR] [--boolq-limit 20] [--calib-texts 16]

Arms (each with its own MLflow store under --out, weights not logged to MLflow in either):

- ``sweep``: ``python -m sweep -m grid=economy12`` with an empty disk cache: the float model, its
  BoolQ baseline and the observation pass are paid once, in-process.
- ``separate``: the 12 configs as 12 ``python -m sweep`` single runs, one after the other, with the
  disk cache off: every process pays imports, model load, baseline and observation again.
- ``separate_warm`` (``--warm``): the 12 single runs again, disk cache on and already filled by the
  sweep arm: what parallel workers or later processes get from the disk cache.

Prints and writes (``economy.json``, ``economy.md`` under ``--out``, and
``benchmarks/results/sweep_economy.*``) the wall times, the ratio sweep / separate (goal ≤ 0.35),
and where the sweep's time goes (from the runs' logged timings). One repetition: the two arms
take about half an hour together on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.common import BOOLQ_CALIB, REPO_ROOT, Figure, write_result

GRID = [(anti, f"L{n}") for anti in ("none", "m1") for n in range(6)]  # = conf/grid/economy12.yaml
STAGES = (  # logged per job: where a job's time goes
    ("float model (load or cache)", "cache_float_model_s"),
    ("float BoolQ baseline", "cache_baseline_s"),
    ("smoothing: float observation, anti-outlier, range_param observation", "cache_smoothing_s"),
    ("quantize weights", "time_quantize_weights_s"),
    ("calibrate activations", "time_calibrate_s"),
    ("save output", "save_s"),
    ("BoolQ of the quantized model", "boolq_eval_seconds"),
)


def common_overrides(out: Path, arm: str, calib: Path, boolq_limit: int) -> list[str]:
    return [
        f"calib.calib_file={calib}",
        f"eval.boolq.limit={boolq_limit}",
        f"tracking.tracking_uri=sqlite:///{out}/{arm}/mlflow.db",
        f"tracking.artifact_root={out}/{arm}/artifacts",
        f"tracking.experiment_name=economy-{arm}",
        "tracking.log_weights=false",
        f"hydra.sweep.dir={out}/{arm}/multirun",
    ]


def run(args: list[str], log: Path) -> tuple[float, float]:
    """Run ``python -m sweep <args>``; returns its wall and CPU (user + system) seconds (raises if it fails).

    CPU time is the steadier figure when other work shares the machine: it does not grow with waiting.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("a") as handle:
        command = [sys.executable, "-m", "sweep", *args]
        proc = subprocess.run(command, cwd=log.parent, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"python -m sweep {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def drop_weights(directory: Path) -> None:
    """Delete the quantized weight files under ``directory`` (about 0.4 GB per SmolLM2 output);
    their sha256 is in MLflow. Done between timed runs."""
    for path in directory.rglob("quant_model_weight_*.safetensors"):
        path.unlink()


def job_metrics(out: Path, arm: str) -> list[dict[str, float]]:
    client = MlflowClient(f"sqlite:///{out}/{arm}/mlflow.db")
    experiment = client.get_experiment_by_name(f"economy-{arm}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("sweep.role") != "parent" and r.info.status == "FINISHED"]
    if len(jobs) != len(GRID):
        raise SystemExit(f"{arm}: {len(jobs)} finished runs, expected {len(GRID)}")
    return [dict(r.data.metrics, _start=r.info.start_time) for r in jobs]


def breakdown(jobs: list[dict[str, float]]) -> dict[str, float]:
    """Seconds per stage summed over the jobs, and the rest of the jobs' time."""
    totals = {}
    for label, key in STAGES:
        totals[label] = sum(j.get(key, 0.0) for j in jobs)
    totals["other (logging, plots, checks)"] = sum(j["job_s"] for j in jobs) - sum(totals.values())
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="a new directory for the arms' stores (default: a temp dir)"
    )
    parser.add_argument("--boolq-limit", type=int, default=20)
    parser.add_argument("--calib-texts", type=int, default=16)
    parser.add_argument("--warm", action="store_true", help="also run the separate processes with a warm disk cache")
    parser.add_argument("--from-json", type=Path, help="only rewrite the reports from a finished run's economy.json")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        write_common_result(result, render(result))
        return
    if args.out is not None and args.out.exists():
        parser.error(f"--out: {args.out} exists; give a new directory (the arms' stores must start empty)")
    out = (args.out or Path(tempfile.mkdtemp(prefix="sweep_economy-"))).resolve()
    out.mkdir(parents=True, exist_ok=args.out is None)
    calib = out / "calib.jsonl"
    lines = BOOLQ_CALIB.read_text().splitlines(keepends=True)
    calib.write_text("".join(lines[: args.calib_texts]))
    result: dict = {"boolq_limit": args.boolq_limit, "calib_texts": args.calib_texts, "configs": len(GRID)}

    (out / "sweep").mkdir()
    sweep_args = ["-m", "grid=economy12", *common_overrides(out, "sweep", calib, args.boolq_limit)]
    result["sweep_s"], result["sweep_cpu_s"] = run([*sweep_args, f"cache.dir={out}/cache"], out / "sweep" / "log.txt")
    drop_weights(out / "sweep")
    print(f"one sweep: {result['sweep_s']:.1f} s", flush=True)

    arms = [("separate", "cache.dir=null")] + ([("separate_warm", f"cache.dir={out}/cache")] if args.warm else [])
    for arm, cache in arms:
        (out / arm).mkdir()
        times, cpu = [], []
        for anti, level in GRID:
            single = [f"anti_method={anti}", f"disable_level={level}", f"hydra.run.dir={out}/{arm}/{anti}-{level}"]
            overrides = [*single, *common_overrides(out, arm, calib, args.boolq_limit), cache]
            wall, cpu_s = run(overrides, out / arm / "log.txt")
            times.append(wall)
            cpu.append(cpu_s)
            drop_weights(out / arm)
            print(f"{arm} {anti} {level}: {times[-1]:.1f} s", flush=True)
        result[f"{arm}_s"] = sum(times)
        result[f"{arm}_cpu_s"] = sum(cpu)
        result[f"{arm}_per_process_s"] = times

    result["ratio"] = result["sweep_s"] / result["separate_s"]
    result["cpu_ratio"] = result["sweep_cpu_s"] / result["separate_cpu_s"]
    sweep_jobs = job_metrics(out, "sweep")
    separate_jobs = job_metrics(out, "separate")
    result["sweep_breakdown_s"] = breakdown(sweep_jobs)
    result["sweep_jobs_s"] = sum(j["job_s"] for j in sweep_jobs)
    result["sweep_outside_jobs_s"] = result["sweep_s"] - result["sweep_jobs_s"]
    result["separate_breakdown_s"] = breakdown(separate_jobs)
    result["separate_outside_jobs_s"] = result["separate_s"] - sum(j["job_s"] for j in separate_jobs)
    (out / "economy.json").write_text(json.dumps(result, indent=2) + "\n")
    report = render(result)
    (out / "economy.md").write_text(report)
    print(report)
    write_common_result(result, report)


SAME_WORK = ("quantize weights", "calibrate activations", "save output", "BoolQ of the quantized model")


def same_work_factor(r: dict) -> float:
    """Sweep-arm seconds / separate-arm seconds of the stages whose work is identical in both arms."""
    return sum(r["sweep_breakdown_s"][k] for k in SAME_WORK) / sum(r["separate_breakdown_s"][k] for k in SAME_WORK)


def write_common_result(r: dict, report: str) -> None:
    """The figures in the shared result format (``benchmarks/results/sweep_economy.*``)."""
    figures = [
        Figure("one sweep / 12 separate processes (wall time)", [r["ratio"]], goal=0.35),
        *([Figure("one sweep / 12 separate processes (CPU time)", [r["cpu_ratio"]])] if "cpu_ratio" in r else []),
        Figure("one sweep (cold disk cache)", [r["sweep_s"]], unit="s"),
        Figure("12 separate processes, no disk cache", [r["separate_s"]], unit="s"),
    ]
    if "separate_warm_s" in r:
        figures.append(Figure("12 separate processes, warm disk cache", [r["separate_warm_s"]], unit="s"))
    settings = {"configs": r["configs"], "calib_texts": r["calib_texts"], "boolq_limit": r["boolq_limit"]}
    factor = same_work_factor(r)
    figures.append(Figure("the same, separate arm rescaled by the same-work slowdown", [r["ratio"] / factor]))
    notes = [
        "One repetition (the two arms take about half an hour together); min = max.",
        f"The arms ran one after the other on a shared machine. Work that is identical in both arms (calibration, "
        f"quantizing weights, saving, BoolQ of the quantized models) took {1 / factor:.2f}× as long in the separate "
        "arm, so the load differed; the rescaled ratio divides the separate arm's time by that factor "
        "(what it would have taken under the sweep arm's load).",
    ]
    table = report.split("\n\n", 1)[1]  # the tables, without the settings line
    write_result(
        "sweep_economy",
        "Sweep economy: a 12-config grid as one sweep vs 12 processes",
        settings,
        figures,
        notes,
        table,
        r,
    )


def render(r: dict) -> str:
    lines = [
        f"12-config grid (anti_method none/m1 × disable_level L0-L5), SmolLM2-135M, W8A8, act_method 1, "
        f"{r['calib_texts']} calibration texts, BoolQ first {r['boolq_limit']} validation examples",
        "",
        "| arm | wall time (s) | vs 12 separate |",
        "|---|---:|---:|",
        f"| one sweep (cold disk cache) | {r['sweep_s']:.0f} | {r['ratio']:.2f} |",
        f"| 12 separate processes, no disk cache | {r['separate_s']:.0f} | 1.00 |",
    ]
    if "separate_warm_s" in r:
        lines.append(
            f"| 12 separate processes, warm disk cache | {r['separate_warm_s']:.0f} | "
            f"{r['separate_warm_s'] / r['separate_s']:.2f} |"
        )
    lines += ["", "Where the time goes (seconds, summed over the 12 jobs):", ""]
    lines += ["| stage | one sweep | 12 separate |", "|---|---:|---:|"]
    for stage, seconds in r["sweep_breakdown_s"].items():
        lines.append(f"| {stage} | {seconds:.0f} | {r['separate_breakdown_s'][stage]:.0f} |")
    lines.append(
        f"| outside the jobs (imports, Hydra, MLflow setup, summary) | {r['sweep_outside_jobs_s']:.0f} | "
        f"{r['separate_outside_jobs_s']:.0f} |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
