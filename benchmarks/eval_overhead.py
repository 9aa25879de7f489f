"""Evaluation overhead: BoolQ evaluation time of the fake-quant W8A8-m1 SmolLM2 vs the float model
on the same examples (issue 9, item 4; goal ≤ 1.3).

The model is quantized once; each repetition then evaluates float and quantized back to back
(alternating which goes first) through the same lm-eval path, and the ratio is taken within the
repetition. Both runs must score the same examples; the accuracies are reported alongside.

    python -m benchmarks.eval_overhead [--boolq-n 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

from benchmarks.common import BOOLQ_CALIB, BOOLQ_VAL, SMOLLM2, Figure, ratios, timed, write_result
from eval.boolq import evaluate_boolq
from quant.config import QuantConfig
from quant.model_io import load_model
from quant.pipeline import quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SMOLLM2))
    parser.add_argument("--boolq-n", type=int, default=40, help="seeded subset of the BoolQ validation set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    loaded = load_model(args.model)
    quantized = quantize(
        copy.deepcopy(loaded.model), loaded.tokenizer, QuantConfig(calib_file=str(BOOLQ_CALIB), anti_method="m1")
    ).model
    models = {"float": loaded.model, "quantized": quantized}
    seconds: dict[str, list[float]] = {"float": [], "quantized": []}
    accuracy: dict[str, float] = {}
    for i in range(args.repeats):
        order = ("float", "quantized") if i % 2 == 0 else ("quantized", "float")
        for label in order:
            result, elapsed = timed(
                lambda m=models[label]: evaluate_boolq(
                    m,
                    loaded.tokenizer,
                    data_path=BOOLQ_VAL,
                    limit=args.boolq_n,
                    seed=args.seed,
                    batch_size=args.batch_size,
                )
            )
            seconds[label].append(elapsed)
            accuracy[label] = result.accuracy
        print(
            f"run {i + 1}: float {seconds['float'][-1]:.1f} s, quantized {seconds['quantized'][-1]:.1f} s", flush=True
        )

    figures = [
        Figure("fake-quant BoolQ eval time / float", ratios(seconds["quantized"], seconds["float"]), goal=1.3),
        Figure("float BoolQ eval time", seconds["float"], unit="s"),
        Figure("fake-quant BoolQ eval time", seconds["quantized"], unit="s"),
    ]
    notes = [
        f"BoolQ accuracy on these {args.boolq_n} examples: float {accuracy['float']:.3f}, "
        f"W8A8-m1 {accuracy['quantized']:.3f}.",
        "A W8A8 linear quantizes its input per tensor, multiplies by its integer weight held as float32 (bias "
        "fused into the matmul) and scales the output in place, so its extra cost over a float linear is the input "
        "rounding and one multiply.",
    ]
    write_result(
        "eval_overhead",
        "Evaluation overhead: fake-quant vs float BoolQ evaluation",
        {"model": SMOLLM2.name, "boolq_n": args.boolq_n, "seed": args.seed, "batch_size": args.batch_size},
        figures,
        notes,
        raw={"seconds": seconds, "accuracy": accuracy},
    )


if __name__ == "__main__":
    main()
