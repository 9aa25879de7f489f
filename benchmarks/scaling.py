"""Scaling: W8A8-m1 quantize time and memory on random LLaMA models of growing width and depth, and
with growing calibration data (issue 9, item 6).

Three series, each point the median of ``--repeats`` runs: width (depth fixed), depth (width
fixed), calibration tokens (model fixed). For each series the log-log slope of time against
parameters (or tokens) says how cost grows: 1.0 is linear. Memory is the peak resident set while
quantizing above the resident set just before, in units of the model's bytes.

    python -m benchmarks.scaling [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.common import Figure, timed, write_result
from benchmarks.memory import model_bytes, release_free_heap, reset_peak_rss, status_kib
from quant.calib_data import Batch
from quant.config import QuantConfig
from quant.memo import NO_MEMO, Preset
from quant.pipeline import quantize

VOCAB = 4096
SEQ_LEN = 256


def build_model(width: int, depth: int, seed: int = 0) -> LlamaForCausalLM:
    """A random LLaMA-2-shaped model: head dim 64, MLP width ≈ 8/3 × hidden (multiple of 64)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=64 * round(width * 8 / 3 / 64),
        num_hidden_layers=depth,
        num_attention_heads=width // 64,
        num_key_value_heads=width // 64,
        max_position_embeddings=SEQ_LEN,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def random_batches(tokens: int, seed: int = 0) -> list[Batch]:
    """``tokens`` random token ids as batches of one ``SEQ_LEN`` sequence (the reference's layout)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (tokens // SEQ_LEN, 1, SEQ_LEN), generator=gen)  # [n, 1, seq]
    return [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids]


def measure(width: int, depth: int, tokens: int, repeats: int) -> dict[str, Any]:
    """Median quantize seconds and peak extra memory (in model bytes) of one configuration."""
    cfg = QuantConfig(calib_texts=["unused: batches are given"], anti_method="m1", act_method=1)
    batches = random_batches(tokens)
    seconds, extra = [], []
    for _ in range(repeats):
        model = build_model(width, depth)
        size = model_bytes(model)
        release_free_heap()
        before = status_kib("VmRSS") * 1024
        reset_peak_rss()
        _, elapsed = timed(lambda m=model: quantize(m, None, cfg, Preset(NO_MEMO, calib_data=batches)))
        extra.append((status_kib("VmHWM") * 1024 - before) / size)
        seconds.append(elapsed)
        del model
        gc.collect()
    reference = build_model(width, depth)
    params = sum(p.numel() for p in reference.parameters())
    layer_params = sum(p.numel() for p in reference.model.layers.parameters())  # what quantize works on
    return {
        "width": width,
        "depth": depth,
        "tokens": tokens,
        "params_m": params / 1e6,
        "layer_params_m": layer_params / 1e6,
        "quantize_s": statistics.median(seconds),
        "quantize_s_runs": seconds,
        "peak_extra_over_model": statistics.median(extra),
    }


def log_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    args = parser.parse_args()
    series: dict[str, list[dict[str, Any]]] = {"width": [], "depth": [], "tokens": []}
    for width in args.widths:
        series["width"].append(measure(width, 4, 2048, args.repeats))
    for depth in args.depths:
        series["depth"].append(measure(512, depth, 2048, args.repeats))
    for tokens in args.tokens:
        series["tokens"].append(measure(512, 4, tokens, args.repeats))
    for name, points in series.items():
        for p in points:
            print(f"{name}: {p}", flush=True)

    def slope(name: str, x: str) -> float:
        return log_slope([p[x] for p in series[name]], [p["quantize_s"] for p in series[name]])

    figures = [
        Figure(
            "log-log slope: time vs decoder-layer parameters, growing width (depth 4)",
            [slope("width", "layer_params_m")],
            unit="",
        ),
        Figure(
            "log-log slope: time vs decoder-layer parameters, growing depth (width 512)",
            [slope("depth", "layer_params_m")],
            unit="",
        ),
        Figure("log-log slope: time vs calibration tokens (512 × 4)", [slope("tokens", "tokens")], unit=""),
        Figure(
            "peak extra memory while quantizing / model bytes (all points)",
            [p["peak_extra_over_model"] for points in series.values() for p in points],
        ),
    ]
    table = [
        "| series | width | depth | params (M) | layer params (M) | calib tokens | quantize s (median) "
        "| peak extra / model |"
    ]
    table.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, points in series.items():
        for p in points:
            table.append(
                f"| {name} | {p['width']} | {p['depth']} | {p['params_m']:.1f} | {p['layer_params_m']:.1f} | "
                f"{p['tokens']} | {p['quantize_s']:.2f} | {p['peak_extra_over_model']:.2f} |"
            )
    write_result(
        "scaling",
        "Scaling: quantize cost vs model size and calibration tokens (random LLaMA models)",
        {"recipe": "W8A8, m1, act_method 1", "vocab": VOCAB, "seq_len": SEQ_LEN, "repeats": args.repeats},
        figures,
        notes=[
            "Slopes are single fits over the medians (one value each, so min = max). Slope 1 means cost grows in "
            "proportion: the quantizer's work is linear in the decoder layers' parameters and sublinear in tokens "
            "at these sizes (fixed per-layer overheads weigh more with few tokens).",
            "Peak extra memory is measured in-process (kernel peak RSS reset before each run) with glibc's default "
            "allocator, so it includes heap pages freed but kept resident (see the memory benchmark).",
        ],
        extra_markdown="\n".join(table) + "\n",
        raw=series,
    )


if __name__ == "__main__":
    main()
