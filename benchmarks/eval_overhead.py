"""Evaluation overhead: BoolQ evaluation time of the quantized W8A8-m1 SmolLM2 vs the float model
on the same examples (issue 9 item 4, issue 15 item 4; goal ≤ 1.3).

The quantized model is evaluated at integer size (issue 15): its linears hold the int8 weights
as stored and multiply them with ``torch._int_mm``; the figures also give the bytes its linears
hold against the float linears', and check that its logits equal those of the fake-quant path
(integer kernels off, weights dequantized per call) on the calibration texts.

The model is quantized once; each repetition then evaluates float and quantized back to back
(alternating which goes first) through the same lm-eval path, and the ratio is taken within the
repetition. Both runs must score the same examples; the accuracies are reported alongside.

    python -m benchmarks.eval_overhead [--boolq-n 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import BOOLQ_CALIB, BOOLQ_VAL, SMOLLM2, Figure, ratios, timed, write_result
from eval.boolq import evaluate_boolq
from quant.calib_data import read_calib_texts
from quant.config import QuantConfig
from quant.int_matmul import integer_kernels
from quant.model_io import load_model
from quant.pipeline import quantize
from quant.qlinear import QuantLinear


def calibration(n: int | None) -> dict:
    """The recipe's calibration data: the whole BoolQ calibration file, or its first ``n`` texts."""
    return {"calib_file": str(BOOLQ_CALIB)} if n is None else {"calib_texts": read_calib_texts(BOOLQ_CALIB)[:n]}


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor held by the model's linear modules (float or quantized), lm_head included."""
    total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, QuantLinear)):
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def integer_logits_equal_fake_quant(model: torch.nn.Module, tokenizer, n_texts: int = 4) -> bool:
    """Whether the logits with the integer kernel equal those with it off, on the first calibration texts."""
    texts = read_calib_texts(BOOLQ_CALIB)[:n_texts]
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            integer = model(ids).logits
            with integer_kernels(False):
                if not torch.equal(integer, model(ids).logits):
                    return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SMOLLM2))
    parser.add_argument("--boolq-n", type=int, default=40, help="seeded subset of the BoolQ validation set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calib-n", type=int, default=None, help="calibrate on the first n texts (default: all 50)")
    args = parser.parse_args()

    loaded = load_model(args.model)
    quantized = quantize(
        copy.deepcopy(loaded.model), loaded.tokenizer, QuantConfig(**calibration(args.calib_n), anti_method="m1")
    ).model
    models = {"float": loaded.model, "quantized": quantized}
    held = {label: linear_weight_bytes(m) for label, m in models.items()}
    logits_equal = integer_logits_equal_fake_quant(quantized, loaded.tokenizer)
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

    pairs = ", ".join(f"{f:.1f} s / {q:.1f} s" for f, q in zip(seconds["float"], seconds["quantized"]))
    figures = [
        Figure(
            "quantized (integer-size) BoolQ eval time / float", ratios(seconds["quantized"], seconds["float"]), goal=1.3
        ),
        Figure("float BoolQ eval time", seconds["float"], unit="s"),
        Figure("quantized BoolQ eval time", seconds["quantized"], unit="s"),
        Figure("bytes held by the quantized model's linears / float linears", [held["quantized"] / held["float"]]),
    ]
    notes = [
        f"BoolQ accuracy on these {args.boolq_n} examples: float {accuracy['float']:.3f}, "
        f"W8A8-m1 {accuracy['quantized']:.3f}.",
        "A W8A8 linear quantizes its input per tensor to int8, multiplies it by its stored int8 weight with "
        "torch._int_mm (exact int32 sums), adds quant_bias and scales the output: no float copy of the weight.",
        f"Linear weights held: float {held['float'] / 1e6:.1f} MB, quantized {held['quantized'] / 1e6:.1f} MB "
        "(every tensor of each linear module; lm_head stays float, disable_last_linear).",
        f"Logits of the integer kernel equal the fake-quant path's on the calibration texts: {logits_equal}.",
        f"Pairs (float, quantized) in the order run: {pairs}.",
    ]
    write_result(
        "eval_overhead",
        "Evaluation overhead: fake-quant vs float BoolQ evaluation",
        {
            "model": SMOLLM2.name,
            "boolq_n": args.boolq_n,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "calib_n": args.calib_n or 50,
        },
        figures,
        notes,
        raw={"seconds": seconds, "accuracy": accuracy, "held_bytes": held, "logits_equal": logits_equal},
    )


if __name__ == "__main__":
    main()
