"""What the benchmarks share: the shared data's paths, repeated measurements, machine facts and
result files (``benchmarks/results/<name>.json`` and ``.md``, read by :mod:`benchmarks.report`)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("QUANT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
SMOLLM2 = DATA / "models" / "smollm2-135m-instruct-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BOOLQ_CALIB = DATA / "msmodelslim_common" / "boolq.jsonl"
WIKITEXT = DATA / "wikitext-2-raw" / "wiki.test.raw"
BOOLQ_VAL = DATA / "boolq" / "val.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One reported figure: the median of ``runs`` with min and max, and its goal if it has one.

    ``goal`` is an upper bound (every goal of issue 9 is "at most"); ``None`` for a plain figure.
    """

    name: str
    runs: list[float]
    unit: str = "ratio"
    goal: float | None = None
    note: str = ""
    value: float = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)
    goal_met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError(f"figure {self.name!r} has no runs")
        self.value = statistics.median(self.runs)
        self.min, self.max = min(self.runs), max(self.runs)
        self.goal_met = None if self.goal is None else self.value <= self.goal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-repetition ratios: each numerator over the denominator measured next to it."""
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def machine() -> str:
    """The machine in words: CPU, cores torch uses, memory, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x)
        memory = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        memory = "unknown memory"
    return (
        f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {memory}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def markdown_figures(figures: Sequence[Figure]) -> str:
    """A table of figures: median, min–max, runs, goal and whether it is met."""
    lines = ["| figure | median | min – max | runs | goal | met |", "|---|---:|---:|---:|---:|:---:|"]
    for f in figures:
        goal = "–" if f.goal is None else f"≤ {f.goal:g}"
        met = "–" if f.goal_met is None else ("yes" if f.goal_met else "**no**")
        lines.append(
            f"| {f.name} | {_fmt(f.value, f.unit)} | {_fmt(f.min, f.unit)} – {_fmt(f.max, f.unit)} | "
            f"{len(f.runs)} | {goal} | {met} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    return f"{value:.4g} {unit}".strip()


def write_result(
    name: str,
    title: str,
    settings: dict[str, Any],
    figures: Sequence[Figure],
    notes: Sequence[str] = (),
    extra_markdown: str = "",
    raw: dict[str, Any] | None = None,
    results_dir: Path = RESULTS,
) -> Path:
    """Write ``<results_dir>/<name>.json`` and ``.md`` (atomically); returns the JSON path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "title": title,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_1min_at_end": os.getloadavg()[0],
        "settings": settings,
        "figures": [f.to_dict() for f in figures],
        "notes": list(notes),
        "raw": raw or {},
    }
    md = [f"## {title}", "", markdown_figures(figures)]
    if extra_markdown:
        md += [extra_markdown.rstrip("\n"), ""]
    md += [f"- {note}" for note in notes]
    md += ["", "Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + "."]
    md += [f"Load average (1 min) when it finished: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."]
    json_path = results_dir / f"{name}.json"
    _write_atomic(json_path, json.dumps(payload, indent=2, default=str) + "\n")
    _write_atomic(results_dir / f"{name}.md", "\n".join(md) + "\n")
    return json_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
