"""Float vs W8A8 (SmoothQuant m1) SmolLM2-135M on BoolQ and WikiText-2, evaluated from the saved weights.

Quantizes with the reference recipe (m1, act_method 1, the reference's 50 BoolQ calibration texts,
model_type llama2 defaults), saves in the reference format, reloads the saved directory and
evaluates that model (its tensors checked against the file) next to the float model on the same
seeded BoolQ subset. Reports accuracy ± standard error, paired statistics (flip rate, McNemar,
mean KL), WikiText-2 perplexity and the evaluation time ratio quantized / float (wall clock and
process CPU time; CPU time is the steadier figure on a shared machine).

    PYTHONPATH=. QUANT_DATA_DIR=../shared/data python benchmarks/eval_float_vs_w8a8.py --out /tmp/bench --boolq-n 300

Writes ``results.json``, ``results.md`` and both per-example files under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.common import BOOLQ_CALIB as CALIB
from benchmarks.common import BOOLQ_VAL as BOOLQ
from benchmarks.common import SMOLLM2 as MODEL
from benchmarks.common import WIKITEXT
from eval.boolq import BoolQResult, evaluate_boolq, write_per_example
from eval.compare import compare_boolq
from eval.fingerprint import check_model_matches_saved
from eval.perplexity import wikitext_perplexity
from quant.config import QuantConfig
from quant.model_io import load_model
from quant.pipeline import quantize
from quant.reload import load_quantized
from quant.runner import save_result

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """``fn()`` with its wall-clock and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def quantized_directory(out: Path, reuse: Path | None) -> Path:
    """The saved W8A8-m1 output: ``reuse`` if given, else quantize the float model into ``out``."""
    if reuse is not None:
        return reuse
    target = out / "smollm2_w8a8_m1"
    if (target / "quant_model_description.json").is_file():
        return target
    cfg = QuantConfig(
        model_path=str(MODEL), save_directory=str(target), calib_file=str(CALIB), anti_method="m1", act_method=1
    )
    loaded = load_model(cfg.model_path)
    result = quantize(loaded.model, loaded.tokenizer, cfg)
    save_result(result, loaded, cfg.save_directory)
    return target


def evaluate(label: str, model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """BoolQ and perplexity of one model, each timed."""
    boolq, boolq_wall, boolq_cpu = timed(
        lambda: evaluate_boolq(
            model, tokenizer, data_path=BOOLQ, limit=args.boolq_n, seed=args.seed, batch_size=args.batch_size
        )
    )
    ppl, ppl_wall, ppl_cpu = timed(
        lambda: wikitext_perplexity(
            model, tokenizer, WIKITEXT, max_tokens=args.ppl_tokens, block_size=args.block_size, stride=args.stride
        )
    )
    print(f"{label}: acc {boolq.accuracy:.4f} ± {boolq.stderr:.4f}, ppl {ppl.ppl:.3f} ({boolq_wall:.0f} s BoolQ)")
    return {
        "boolq": boolq,
        "ppl": ppl,
        "boolq_wall_s": boolq_wall,
        "boolq_cpu_s": boolq_cpu,
        "ppl_wall_s": ppl_wall,
        "ppl_cpu_s": ppl_cpu,
    }


def markdown(summary: dict[str, Any]) -> str:
    """The results table for docs/evaluation.md."""
    f, q, c = summary["float"], summary["w8a8_m1"], summary["paired"]
    n = summary["boolq_n"]
    lines = [
        f"BoolQ: {n} examples (seed {summary['seed']}) of the shared validation set; WikiText-2: first "
        f"{summary['ppl_tokens']} tokens, window {summary['block_size']}, stride {summary['stride']}.",
        "",
        "| model | BoolQ acc ± s.e. | WikiText-2 ppl | BoolQ eval wall s | BoolQ eval CPU s |",
        "|---|---|---|---|---|",
    ]
    for label, r in (("float", f), ("W8A8 m1 (reloaded)", q)):
        lines.append(
            f"| {label} | {r['acc']:.4f} ± {r['acc_stderr']:.4f} | {r['ppl']:.3f} | "
            f"{r['boolq_wall_s']:.0f} | {r['boolq_cpu_s']:.0f} |"
        )
    lines += [
        "",
        "| paired (W8A8 vs float) | value |",
        "|---|---|",
        f"| accuracy delta | {c['accuracy_delta']:+.4f} |",
        f"| flip rate | {c['flip_rate']:.4f} ({c['n_flips']} of {n}) |",
        f"| lost / gained (McNemar b / c) | {c['n_reference_only']} / {c['n_candidate_only']} |",
        f"| McNemar exact p | {c['mcnemar_p']:.4f} |",
        f"| mean KL(float ‖ W8A8), yes/no | {c['mean_kl']:.5f} nats |",
        f"| BoolQ time ratio W8A8 / float, wall | {summary['time_ratio_wall']:.3f} |",
        f"| BoolQ time ratio W8A8 / float, CPU | {summary['time_ratio_cpu']:.3f} |",
        f"| perplexity time ratio W8A8 / float, CPU | {summary['ppl_time_ratio_cpu']:.3f} |",
    ]
    return "\n".join(lines) + "\n"


def model_summary(r: dict[str, Any]) -> dict[str, float]:
    boolq: BoolQResult = r["boolq"]
    return {
        "acc": boolq.accuracy,
        "acc_stderr": boolq.stderr,
        "ppl": r["ppl"].ppl,
        "ppl_tokens_scored": r["ppl"].n_tokens,
        **{k: v for k, v in r.items() if k.endswith("_s")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--boolq-n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--quantized", type=Path, default=None, help="an already saved W8A8-m1 output directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    directory = quantized_directory(args.out, args.quantized)
    reloaded = load_quantized(directory)
    check = check_model_matches_saved(reloaded.model, directory)
    float_model = load_model(str(MODEL))

    results = {
        "float": evaluate("float", float_model.model, float_model.tokenizer, args),
        "w8a8_m1": evaluate("W8A8 m1", reloaded.model, reloaded.tokenizer, args),
    }
    for label, r in results.items():
        write_per_example(r["boolq"], args.out / f"boolq_{label}.json")
    paired = compare_boolq(results["float"]["boolq"], results["w8a8_m1"]["boolq"])
    f, q = results["float"], results["w8a8_m1"]
    summary = {
        "boolq_n": paired.n,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "ppl_tokens": args.ppl_tokens,
        "block_size": args.block_size,
        "stride": args.stride,
        "quantized_directory": str(directory),
        "saved_tensors_sha256": check.saved_sha256,
        "float": model_summary(f),
        "w8a8_m1": model_summary(q),
        "paired": paired.__dict__,
        "time_ratio_wall": q["boolq_wall_s"] / f["boolq_wall_s"],
        "time_ratio_cpu": q["boolq_cpu_s"] / f["boolq_cpu_s"],
        "ppl_time_ratio_cpu": q["ppl_cpu_s"] / f["ppl_cpu_s"],
        "boolq_config": f["boolq"].config,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    table = markdown(summary)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
