"""Memory: peak resident memory while quantizing SmolLM2-135M (W8A8-m1) vs the float model's bytes
(issue 9, item 3; goal ≤ 1.3).

Each repetition is a fresh process (so one run's freed memory cannot hide the next one's peak).
The process notes its resident set after the imports (the runtime: Python, torch, transformers),
loads the model, returns freed heap to the OS, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), quantizes, and reads the peak (``VmHWM``). The figure is
(peak − runtime) / float model bytes: the memory the model and its quantization take, in units of
the model.

    python -m benchmarks.memory [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import BOOLQ_CALIB, REPO_ROOT, SMOLLM2, Figure, write_result

MIB = 2**20


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def release_free_heap() -> None:
    """Collect garbage and hand freed malloc arenas back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> None:
    """Make ``VmHWM`` start again from the current resident set (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure_once(model_path: str, calib_file: str) -> dict[str, float]:
    """One quantization in this process; sizes in MiB."""
    import torch

    from quant.config import QuantConfig
    from quant.model_io import load_model
    from quant.pipeline import quantize

    release_free_heap()
    runtime = status_kib("VmRSS") / 1024
    loaded = load_model(model_path)
    tensors = {t.data_ptr(): t for t in [*loaded.model.parameters(), *loaded.model.buffers()]}  # tied once
    model_mib = sum(t.numel() * t.element_size() for t in tensors.values()) / MIB
    release_free_heap()
    loaded_rss = status_kib("VmRSS") / 1024
    reset_peak_rss()
    result = quantize(loaded.model, loaded.tokenizer, QuantConfig(calib_file=calib_file, anti_method="m1"))
    peak = status_kib("VmHWM") / 1024
    release_free_heap()
    after = status_kib("VmRSS") / 1024
    del result
    return {
        "runtime_mib": runtime,
        "model_mib": model_mib,
        "loaded_rss_mib": loaded_rss,
        "peak_rss_mib": peak,
        "after_rss_mib": after,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SMOLLM2))
    parser.add_argument("--calib-file", default=str(BOOLQ_CALIB))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_once(args.model, args.calib_file)))
        return

    runs = []
    for i in range(args.repeats):
        command = [sys.executable, "-m", "benchmarks.memory", "--child", "--model", args.model]
        out = subprocess.run(
            [*command, "--calib-file", args.calib_file], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"run {i + 1}: {runs[-1]}", flush=True)

    def figure(name: str, values: list[float], unit: str = "ratio", goal: float | None = None) -> Figure:
        return Figure(name, values, unit=unit, goal=goal)

    figures = [
        figure(
            "(peak RSS while quantizing − runtime) / float model bytes",
            [(r["peak_rss_mib"] - r["runtime_mib"]) / r["model_mib"] for r in runs],
            goal=1.3,
        ),
        figure(
            "peak RSS while quantizing / RSS of the loaded model",
            [r["peak_rss_mib"] / r["loaded_rss_mib"] for r in runs],
        ),
        figure("float model (parameters + buffers)", [r["model_mib"] for r in runs], unit="MiB"),
        figure("runtime before loading (Python, torch, transformers)", [r["runtime_mib"] for r in runs], unit="MiB"),
        figure("RSS with the model loaded", [r["loaded_rss_mib"] for r in runs], unit="MiB"),
        figure("peak RSS while quantizing", [r["peak_rss_mib"] for r in runs], unit="MiB"),
        figure("RSS after quantizing (quantized model)", [r["after_rss_mib"] for r in runs], unit="MiB"),
    ]
    write_result(
        "memory",
        "Memory: peak resident set while quantizing vs the float model",
        {"model": SMOLLM2.name, "recipe": "W8A8, anti_method m1, act_method 1", "repeats": args.repeats},
        figures,
        raw={"runs": runs},
    )


if __name__ == "__main__":
    main()
