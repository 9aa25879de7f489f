"""The benchmark report: every ``benchmarks/results/<name>.json`` in one markdown and one JSON file,
also logged to MLflow as a run of its own experiment.

    python -m benchmarks.report [--tracking-uri sqlite:///mlflow/mlflow.db]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, RESULTS

ORDER = ("sweep_economy", "quantize_speed", "memory", "eval_overhead", "vs_llm_compressor", "scaling")
REPORT_MD = RESULTS / "REPORT.md"
REPORT_JSON = RESULTS / "report.json"
EXPERIMENT = "benchmarks"


def load_results(results_dir: Path = RESULTS) -> list[dict[str, Any]]:
    """The issue-9 benchmarks' results in report order, then any other benchmark's."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json")) if p != REPORT_JSON}
    found = {name: r for name, r in found.items() if "figures" in r}
    return [found[n] for n in ORDER if n in found] + [r for n, r in found.items() if n not in ORDER]


def goals_table(results: list[dict[str, Any]]) -> str:
    """One row per figure that has a goal."""
    lines = ["| benchmark | figure | median | min – max | runs | goal | met |", "|---|---|---:|---:|---:|---:|:---:|"]
    for r in results:
        for f in r["figures"]:
            if f.get("goal") is None:
                continue
            met = "yes" if f["goal_met"] else "**no**"
            lines.append(
                f"| {r['benchmark']} | {f['name']} | {f['value']:.3f} | {f['min']:.3f} – {f['max']:.3f} | "
                f"{len(f['runs'])} | ≤ {f['goal']:g} | {met} |"
            )
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def build_report(results: list[dict[str, Any]], missing: list[str]) -> str:
    lines = [
        "# Benchmark report",
        "",
        f"Commit {git_commit()}. Each benchmark's date and machine are in its section; "
        'regenerate with `python -m benchmarks` (README, "Benchmarks").',
        "",
        "Absolute times on a shared 2-core machine are noise; the figures that count are ratios measured "
        "within one run. Each figure is the median of its runs, with min and max.",
        "",
        "## Goals",
        "",
        goals_table(results),
    ]
    if missing:
        lines += [f"Not measured in this report: {', '.join(missing)}.", ""]
    for r in results:
        section = (RESULTS / f"{r['benchmark']}.md").read_text(encoding="utf-8")
        lines += [section.rstrip("\n"), "", f"_Measured {r['date']} on {r['machine']}._", ""]
    return "\n".join(lines)


def log_to_mlflow(results: list[dict[str, Any]], tracking_uri: str) -> str:
    """One run in the ``benchmarks`` experiment: every figure as a metric, the report as artifacts."""
    from sweep.tracking import setup_experiment, tracked_run

    experiment_id = setup_experiment(tracking_uri, EXPERIMENT, str(REPO_ROOT / "mlflow" / "artifacts"))
    import mlflow

    with tracked_run(experiment_id, f"benchmarks-{git_commit()}", {"git_commit": git_commit()}) as run:
        for r in results:
            for i, f in enumerate(r["figures"]):
                mlflow.log_metric(f"{r['benchmark']}.{i}.median", f["value"])
            mlflow.log_dict(r, f"results/{r['benchmark']}.json")
        mlflow.log_artifact(str(REPORT_MD))
        mlflow.log_artifact(str(REPORT_JSON))
        return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{REPO_ROOT / 'mlflow' / 'mlflow.db'}")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    results = load_results()
    missing = [n for n in ORDER if n not in {r["benchmark"] for r in results}]
    REPORT_MD.write_text(build_report(results, missing), encoding="utf-8")
    REPORT_JSON.write_text(json.dumps({"results": results, "missing": missing}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {REPORT_MD.relative_to(REPO_ROOT)} and {REPORT_JSON.relative_to(REPO_ROOT)}")
    if not args.no_mlflow:
        print(f"logged to MLflow experiment '{EXPERIMENT}', run {log_to_mlflow(results, args.tracking_uri)}")


if __name__ == "__main__":
    main()
