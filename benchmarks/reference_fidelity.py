"""Benchmark (not a test): our output against the reference's for every sample recipe of the fixture.

For each case of ``shared/fixtures/reference_tiny/out/`` it runs ``quant-llama`` with the case's
flags and prints MATCH or the measured difference: per tensor kind the fraction of elements equal
(integers) or within rtol 1e-6 (floats), the ±1 count and the max relative error. The same
comparison is the oracle test (tests/quant/test_reference_oracle.py); this prints the table the
docs quote, and writes it as markdown with ``--out``.

    PYTHONPATH=$PWD QUANT_DATA_DIR=/work/shared/data python benchmarks/reference_fidelity.py [case ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_oracle import CaseDiff, case_names, compare_case, fixture_root, run_ours, unpack_reference


def markdown(diffs: list[CaseDiff]) -> str:
    """One line per case: MATCH, or each kind that differs with its figures."""
    lines = ["| recipe | result | kinds that differ: fraction equal, max rel err (floats) / max abs diff (integers) |"]
    lines.append("|---|---|---|")
    for diff in diffs:
        if diff.ok:
            lines.append(f"| {diff.case} | match | – |")
            continue
        kinds = [
            f"{kind}: {k['fraction_equal']:.2%}, "
            + (f"max abs diff {k['max_abs_diff']:g}" if k["integer"] else f"max rel err {k['max_rel_err']:.2g}")
            for kind, k in sorted(diff.by_kind().items())
            if k["fraction_equal"] < 1.0
        ]
        structural = [f"{t.name}: {t.problem}" for t in diff.tensors if t.problem][:3]
        lines.append(f"| {diff.case} | differs | {'; '.join(structural + kinds + diff.description[:3])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="cases to run (default: every case of the fixture)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    root = fixture_root()
    work = Path(tempfile.mkdtemp(prefix="reference_fidelity_"))
    reference = unpack_reference(root, work / "reference")
    diffs = []
    for case in args.cases or case_names(root):
        started = time.perf_counter()
        run_ours(root, case, work / "ours" / case)
        diff = compare_case(case, work / "ours" / case, reference / case, root / "out" / case)
        diffs.append(diff)
        print(diff.report(), f"\n  ({time.perf_counter() - started:.1f} s)", flush=True)
    table = markdown(diffs)
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
