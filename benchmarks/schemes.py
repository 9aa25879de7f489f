"""Measure every weight/activation scheme on SmolLM2-135M against the float model.

For each scheme: quantize (reference defaults: model_type llama2, so a_bit 8 schemes keep every
down_proj in float; lm_head float), save in the reference's format, reload from disk, then
WikiText-2 perplexity (fixed token budget) and BoolQ accuracy on a fixed subset, paired
against the float model's predictions. The model evaluated is the saved one.

    PYTHONPATH=. QUANT_DATA_DIR=../shared/data python benchmarks/schemes.py --out /tmp/schemes

Writes ``results.json`` (after every scheme) and ``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BOOLQ_CALIB as CALIB
from benchmarks.common import BOOLQ_VAL as BOOLQ
from benchmarks.common import SMOLLM2 as MODEL
from benchmarks.common import WIKITEXT
from eval.boolq import evaluate_boolq
from eval.compare import compare_boolq
from eval.perplexity import wikitext_perplexity
from quant.calib_data import calibration_batches
from quant.config import QuantConfig
from quant.memo import Memo, MemoryMemo, Preset
from quant.model_io import load_model
from quant.pipeline import quantize
from quant.reload import load_quantized
from quant.runner import save_result

W4A8 = dict(w_bit=4, is_lowbit=True, open_outlier=False, is_dynamic=True)
W4A16_GROUP = dict(w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False)
# name: QuantConfig flags. group_size 128 does not divide SmolLM2's hidden size 576 (refused, not measured).
SCHEMES: dict[str, dict[str, Any]] = {
    "W8A16": dict(a_bit=16),
    "W8A16 asymmetric": dict(a_bit=16, w_sym=False),
    "W4A16 per-group 32": dict(**W4A16_GROUP, group_size=32),
    "W4A16 per-group 64": dict(**W4A16_GROUP, group_size=64),
    "W4A16 outlier-protected (fraction 0.01)": dict(w_bit=4, a_bit=16, is_lowbit=True),
    "W8A8_DYNAMIC (m1)": dict(anti_method="m1", is_dynamic=True),
    "W4A8_DYNAMIC group 32 (m1)": dict(**W4A8, group_size=32, anti_method="m1"),
    "W4A8_DYNAMIC group 64 (m1)": dict(**W4A8, group_size=64, anti_method="m1"),
    "W8A8 (m1)": dict(anti_method="m1"),
    "W8A8 (m1) per-tensor weights": dict(anti_method="m1", mm_tensor=True),
    "W8A8 (m1) tp_size 4": dict(anti_method="m1", tp_size=4),
    "W8A8S (m1, fraction 0.01)": dict(co_sparse=True, anti_method="m1"),
    "W8A8S (m1, use_sigma 3.0)": dict(co_sparse=True, use_sigma=True, anti_method="m1"),
    "W8A8_MIX (m1), prefill path": dict(anti_method="m1", pdmix=True),
}


def evaluate(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    ppl = wikitext_perplexity(model, tokenizer, WIKITEXT, max_tokens=args.ppl_tokens, block_size=512)
    boolq = evaluate_boolq(model, tokenizer, data_path=BOOLQ, limit=args.boolq_n, batch_size=8)
    return {"ppl": ppl.ppl, "ppl_tokens": ppl.n_tokens, "boolq": boolq, "eval_s": time.perf_counter() - t}


def weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("quant_model_weight_*.safetensors*") if p.is_file())


def float_bytes(model: torch.nn.Module) -> int:
    """float32 bytes of the float model's tensors, tied embeddings counted once (as HF saves them)."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
    return sum(seen.values())


def run_scheme(name: str, flags: dict[str, Any], loaded: Any, memo: Memo, args: argparse.Namespace) -> dict:
    directory = args.out / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    cfg = QuantConfig(model_path=str(MODEL), save_directory=str(directory), calib_file=str(CALIB), **flags)
    t = time.perf_counter()
    result = quantize(loaded.model, loaded.tokenizer, cfg, memo)
    model = result.model
    quant_s = time.perf_counter() - t
    save_result(result, loaded, str(directory), overwrite=True)
    del model, result
    gc.collect()
    reloaded = load_quantized(directory)
    sqnr = [r["weight_sqnr_db"] for r in json.loads((directory / "quant_layer_report.json").read_text())]
    sqnr = [s for s in sqnr if s is not None]
    row = {
        "scheme": name,
        "quant_type": reloaded.quant_type,
        "flags": flags,
        "quantize_s": quant_s,
        "weight_bytes": weight_bytes(directory),
        "quantized_linears": len(sqnr),
        "mean_weight_sqnr_db": sum(sqnr) / len(sqnr),
        **evaluate(reloaded.model, reloaded.tokenizer, args),
    }
    del reloaded
    gc.collect()
    if not args.keep:
        shutil.rmtree(directory)
    return row


def markdown(rows: list[dict[str, Any]], float_row: dict[str, Any]) -> str:
    lines = [
        "| scheme | type | weights on disk (MB) | quantized linears | mean weight SQNR (dB) | WikiText-2 ppl "
        "(Δ) | BoolQ acc | flips vs float | mean KL vs float | quantize (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| float | FLOAT | {float_row['weight_bytes'] / 1e6:.1f} (float32) | 0 | | {float_row['ppl']:.3f} | "
        f"{float_row['boolq_acc']:.3f} | | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheme']} | {r['quant_type']} | {r['weight_bytes'] / 1e6:.1f} | {r['quantized_linears']} | "
            f"{r['mean_weight_sqnr_db']:.1f} | {r['ppl']:.3f} ({r['ppl'] - float_row['ppl']:+.3f}) | "
            f"{r['boolq_acc']:.3f} | {r['boolq_flips']} | {r['boolq_mean_kl']:.4f} | {r['quantize_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--boolq-n", type=int, default=100, help="first n rows of BoolQ validation")
    parser.add_argument("--calib-n", type=int, default=50, help="first n of the reference's 50 calibration texts")
    parser.add_argument("--only", default="", help="comma-separated scheme names (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep each quantized output directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    loaded = load_model(str(MODEL))
    batches = calibration_batches(loaded.tokenizer, QuantConfig(calib_file=str(CALIB)), "cpu")[: args.calib_n]
    # The first calib_n batches for every scheme; the float statistics and smoothings shared between them.
    memo = Preset(MemoryMemo(), calib_data=batches)
    float_eval = evaluate(loaded.model, loaded.tokenizer, args)
    float_row = {"ppl": float_eval["ppl"], "boolq_acc": float_eval["boolq"].accuracy, "eval_s": float_eval["eval_s"]}
    float_row["weight_bytes"] = float_bytes(loaded.model)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCHEMES)
    rows = []
    for name in wanted:
        row = run_scheme(name, SCHEMES[name], loaded, memo, args)
        cmp = compare_boolq(float_eval["boolq"], row.pop("boolq"))
        row.update(boolq_acc=cmp.candidate_accuracy, boolq_flips=cmp.n_flips, boolq_mean_kl=cmp.mean_kl)
        rows.append(row)
        print(f"{name}: ppl {row['ppl']:.3f}, BoolQ {row['boolq_acc']:.3f}, {row['weight_bytes'] / 1e6:.1f} MB")
        settings = {"boolq_n": args.boolq_n, "ppl_tokens": args.ppl_tokens, "calib_n": len(batches)}
        payload = {"float": float_row, **settings, "schemes": rows}
        (args.out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (args.out / "results.md").write_text(markdown(rows, float_row))
    print(markdown(rows, float_row))


if __name__ == "__main__":
    main()
