"""``python -m benchmarks``: run every issue-9 benchmark, one process each, then write the report.

    python -m benchmarks                       # all of them (about an hour on a 2-core CPU)
    python -m benchmarks quantize_speed memory # some of them; the report keeps the others' last results

A benchmark that fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks.common import REPO_ROOT
from benchmarks.report import ORDER
from benchmarks.report import main as write_report


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write benchmarks/results/REPORT.md")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(ORDER)}")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args()
    names = args.names or list(ORDER)
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.exit(2, f"benchmarks: error: NAME: unknown benchmark {unknown[0]!r}; valid values: {', '.join(ORDER)}\n")
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=REPO_ROOT).returncode
        if code != 0:
            print(f"benchmarks: {name} failed (exit {code})", file=sys.stderr)
            failed.append(name)
    write_report(["--no-mlflow"] if args.no_mlflow else [])
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
