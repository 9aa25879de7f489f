"""Benchmark (not a test): every anti_method × act_method on SmolLM2-135M, W8A8, against float.

For each recipe: WikiText-2 perplexity over a fixed token budget, BoolQ accuracy on a fixed
subset (the first N validation examples, through lm-eval), quantize time, how many linears
stayed float and the mean per-layer SQNR. The float model is loaded and evaluated once; each
anti_method smooths a copy of it once, and its act_method variants quantize copies of that
(smoothing does not depend on act_method; the sweep shares it the same way). Results are
written after every recipe (JSON + markdown) so an interrupted run keeps what it measured.

    PYTHONPATH=$PWD QUANT_DATA_DIR=/work/shared/data python benchmarks/anti_act_grid.py
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BOOLQ_CALIB, BOOLQ_VAL, RESULTS, WIKITEXT
from benchmarks.common import SMOLLM2 as MODEL
from eval.boolq import evaluate_boolq
from eval.perplexity import wikitext_perplexity
from quant.config import QuantConfig
from quant.memo import Memo, MemoryMemo
from quant.model_io import load_model
from quant.pipeline import quantize

ANTI_METHODS = ("none", "m1", "m2", "m3", "m4", "m5", "m6")
ACT_METHODS = (1, 2, 3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--calib-file", default=str(BOOLQ_CALIB))
    parser.add_argument("--wikitext", default=str(WIKITEXT))
    parser.add_argument("--boolq", default=str(BOOLQ_VAL))
    parser.add_argument("--ppl-tokens", type=int, default=16384, help="WikiText-2 token budget")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--boolq-n", type=int, default=100, help="first N BoolQ validation examples; 0 skips")
    parser.add_argument("--anti-methods", nargs="+", default=list(ANTI_METHODS))
    parser.add_argument("--act-methods", nargs="+", type=int, default=list(ACT_METHODS))
    parser.add_argument("--model-type", default="llama2", help="QuantConfig.model_type (its default float layers)")
    parser.add_argument("--out", default=str(RESULTS / "anti_act_grid"), help="output path without suffix")
    return parser.parse_args()


def evaluate(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace) -> dict[str, float]:
    """Perplexity and BoolQ accuracy of ``model``, with their wall-clock times."""
    row: dict[str, float] = {}
    t = time.perf_counter()
    ppl = wikitext_perplexity(model, tokenizer, args.wikitext, max_tokens=args.ppl_tokens, block_size=args.block_size)
    row.update(ppl=ppl.ppl, ppl_tokens=ppl.n_tokens, ppl_s=time.perf_counter() - t)
    if args.boolq_n > 0:
        t = time.perf_counter()
        boolq = evaluate_boolq(model, tokenizer, data_path=args.boolq, limit=args.boolq_n, batch_size=8)
        row.update(boolq_acc=boolq.accuracy, boolq_n=boolq.n, boolq_s=time.perf_counter() - t)
        row["boolq_preds"] = [e.pred for e in boolq.per_example]
    return row


SMOOTHING_STAGES = ("observe_s", "anti_outlier_s", "range_param_s", "kv_cache_s")  # paid once per anti_method


def run_recipe(
    loaded: Any,
    cfg: QuantConfig,
    memo: Memo,
    shared: dict[str, float],
    args: argparse.Namespace,
    baseline: dict[str, Any],
) -> dict[str, Any]:
    """Quantize the float model with ``cfg`` through ``memo`` (one smoothing per anti_method) and
    evaluate it. ``shared``: the smoothing stages' seconds, filled by the anti_method's first recipe;
    ``quantize_s`` counts them once per recipe, as if the recipe had been run alone."""
    t = time.perf_counter()
    result = quantize(loaded.model, loaded.tokenizer, cfg, memo)
    quantize_s = time.perf_counter() - t
    if not shared:
        shared.update({k: v for k, v in result.timings.items() if k in SMOOTHING_STAGES})
    else:
        quantize_s += sum(shared.values())
    model = result.model
    sqnr = [r.sqnr_db for r in result.layers if r.sqnr_db is not None and math.isfinite(r.sqnr_db)]
    row: dict[str, Any] = {
        "anti_method": cfg.anti_method,
        "act_method": cfg.act_method,
        "quantize_s": quantize_s,
        "timings": {**shared, **result.timings},
        "float_layers": len(result.float_layers),
        "sqnr_mean_db": statistics.fmean(sqnr),
        "sqnr_min_db": min(sqnr),
        "observers": sorted({r.observer for r in result.layers if r.observer}),
        "anti_details": _summarise_details(result.anti_outlier.details),
    }
    row.update(evaluate(model, loaded.tokenizer, args))
    if "boolq_preds" in row and "boolq_preds" in baseline:
        row["boolq_agree"] = statistics.fmean(a == b for a, b in zip(row["boolq_preds"], baseline["boolq_preds"]))
    return row


def _summarise_details(details: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each searched quantity over the pairs (e.g. m3's ratio, m6's alpha/beta)."""
    keys = sorted({k for d in details.values() for k in d})
    return {k: statistics.fmean(d[k] for d in details.values() if k in d) for k in keys}


def write_results(path: Path, meta: dict[str, Any], baseline: dict[str, float], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "float": baseline, "recipes": rows}
    path.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown_table(meta, baseline, rows), encoding="utf-8")


def markdown_table(meta: dict[str, Any], baseline: dict[str, float], rows: list[dict[str, Any]]) -> str:
    has_boolq = "boolq_acc" in baseline
    head = "| anti_method | act_method | WikiText-2 ppl | Δ ppl vs float |"
    head += " BoolQ acc | agree w/ float |" if has_boolq else ""
    head += " quantize s | float linears | mean SQNR dB | searched (mean over pairs) |"
    lines = [
        f"{Path(meta['model']).name}, W8A8, model_type {meta['model_type']} defaults, calibration "
        f"{meta['calib_texts']} BoolQ texts; WikiText-2 test, first {baseline['ppl_tokens']} scored tokens "
        f"(blocks of {meta['block_size']})"
        + (f"; BoolQ first {baseline['boolq_n']} validation examples" if has_boolq else "")
        + f". {meta['host']}.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    float_row = f"| float | – | {baseline['ppl']:.3f} | – |"
    float_row += f" {baseline['boolq_acc']:.3f} | – |" if has_boolq else ""
    float_row += " – | all | – | – |"
    lines.append(float_row)
    for r in rows:
        delta = 100 * (r["ppl"] / baseline["ppl"] - 1)
        line = f"| {r['anti_method']} | {r['act_method']} | {r['ppl']:.3f} | {delta:+.2f}% |"
        line += f" {r['boolq_acc']:.3f} | {r['boolq_agree']:.2f} |" if has_boolq else ""
        searched = ", ".join(f"{k} {v:.2f}" for k, v in r["anti_details"].items() if k != "error")
        line += f" {r['quantize_s']:.0f} | {r['float_layers']} | {r['sqnr_mean_db']:.1f} | {searched or '–'} |"
        lines.append(line)
    if rows:
        best = min(rows, key=lambda r: r["ppl"])
        delta = 100 * (best["ppl"] / baseline["ppl"] - 1)
        recipe = f"anti_method {best['anti_method']}, act_method {best['act_method']}"
        lines += ["", f"Best perplexity: {recipe} ({delta:+.2f}% vs float)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    out = Path(args.out)
    t = time.perf_counter()
    loaded = load_model(args.model)
    meta = {
        "model": args.model,
        "model_type": args.model_type,
        "calib_file": args.calib_file,
        "calib_texts": sum(1 for line in Path(args.calib_file).read_text().splitlines() if line.strip()),
        "block_size": args.block_size,
        "load_s": time.perf_counter() - t,
        "host": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads (shared machine)",
        "torch": torch.__version__,
    }
    print(f"loaded in {meta['load_s']:.0f} s; evaluating float", flush=True)
    baseline = evaluate(loaded.model, loaded.tokenizer, args)
    print(f"float: {baseline}", flush=True)
    rows: list[dict[str, Any]] = []
    write_results(out, meta, baseline, rows)
    for anti in args.anti_methods:
        recipes = [
            QuantConfig(calib_file=args.calib_file, anti_method=anti, act_method=act, model_type=args.model_type)
            for act in args.act_methods
        ]
        memo, shared = MemoryMemo(), {}
        for cfg in recipes:
            act = cfg.act_method
            row = run_recipe(loaded, cfg, memo, shared, args, baseline)
            rows.append(row)
            write_results(out, meta, baseline, rows)
            print(
                f"{anti} act{act}: ppl {row['ppl']:.3f}, boolq {row.get('boolq_acc', float('nan')):.3f}, "
                f"quantize {row['quantize_s']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
