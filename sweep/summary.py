"""Console output of a sweep: one progress line per job, the final ranking table, the failures."""

from __future__ import annotations

from collections.abc import Sequence

from sweep.run_records import RunRecord


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """A plain fixed-width table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def fmt_signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def fmt_mb(size_bytes: float | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 1e6:.1f}"


def progress_line(
    job: str,
    label: str,
    status: str,
    seconds: float,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    note: str = "",
) -> str:
    """``[job 3/8] w8a8-m1-act1-L2 | acc 0.6250 Δ -0.0125 | 41.2 s | FINISHED 1a2b3c4d``."""
    parts = [f"[{job}] {label}"]
    if metrics and "boolq_acc" in metrics:
        parts.append(f"acc {fmt(metrics['boolq_acc'])} Δ {fmt_signed(metrics.get('vs_float_accuracy_delta'))}")
    parts.append(f"{seconds:.1f} s")
    run = f" {run_id[:8]}" if run_id else ""
    parts.append(f"{status}{run}{': ' + note if note else ''}")
    return " | ".join(parts)


def ranked(records: Sequence[RunRecord], metric: str = "boolq_acc") -> list[RunRecord]:
    """Finished runs, best ``metric`` first; ties go to the smaller output, then the earlier run."""
    done = [r for r in records if r.status == "FINISHED" and r.metric(metric) is not None]
    return sorted(done, key=lambda r: (-r.metrics[metric], r.metrics.get("size_bytes", float("inf")), r.start_time))


def ranking_table(records: Sequence[RunRecord]) -> str:
    """The final table of a sweep: finished runs ranked by BoolQ accuracy."""
    rows = [
        [
            str(i),
            r.name,
            fmt(r.metric("boolq_acc")),
            fmt_signed(r.metric("vs_float_accuracy_delta")),
            fmt(r.metric("vs_float_mcnemar_p"), ".3f"),
            fmt_mb(r.metric("size_bytes")),
            fmt(r.metric("job_s"), ".1f"),
            r.run_id[:8],
        ]
        for i, r in enumerate(ranked(records), start=1)
    ]
    return format_table(["#", "run", "BoolQ acc", "Δ float", "McNemar p", "size MB", "time s", "run id"], rows)


def failure_lines(records: Sequence[RunRecord]) -> list[str]:
    """One line per config whose latest attempt did not finish, with its error."""
    return [
        f"{r.status} {r.name} ({r.run_id[:8]}): {r.error.splitlines()[0] if r.error else 'no error recorded'}"
        for r in records
        if r.status != "FINISHED"
    ]
