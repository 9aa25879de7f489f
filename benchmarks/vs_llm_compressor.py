"""Benchmark (not a test): our W8A8 SmoothQuant against llm-compressor's on SmolLM2-135M.

The same float model, the reference's 50 BoolQ calibration texts (same token ids, no truncation)
and a W8A8 recipe made as close to ours as llm-compressor allows: SmoothQuant (alpha of our m1),
int8 symmetric per-channel weights by round-to-nearest, static per-tensor asymmetric int8
activations, lm_head and every down_proj kept in float (our model_type llama2 default). Reports
WikiText-2 perplexity of float, ours and theirs (one function, one token budget), the ratio of
the perplexity increases and the ratio of quantize times (wall clock of the quantize call alone,
the float model already loaded), each the median of ``--repeats`` runs with min/max.

Needs the optional extra (a separate venv keeps the shared interpreter untouched):

    python3 -m venv /tmp/llmc-venv && /tmp/llmc-venv/bin/pip install torch==2.13.0
    /tmp/llmc-venv/bin/pip install -e ".[bench-llmc]"
    /tmp/llmc-venv/bin/python -m benchmarks.vs_llm_compressor

Writes ``benchmarks/results/vs_llm_compressor.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BOOLQ_CALIB, DATA, RESULTS, SMOLLM2, WIKITEXT, Figure, write_result
from eval.perplexity import wikitext_perplexity
from quant.calib_data import batch_tokens, read_calib_texts, tokenize_texts
from quant.config import QuantConfig
from quant.memo import NO_MEMO, Preset
from quant.model_io import LoadedModel, load_model, resolve_model_source
from quant.pipeline import quantize
from sweep.shared_work import FloatModelCodec

MODEL, CALIB = SMOLLM2, BOOLQ_CALIB
EXTRA = "bench-llmc"
ALPHA = 0.5  # conf/anti_method/m1.yaml and quant/anti_outlier/m1_smoothquant.py: the reference's alpha
# Our llama2 default keeps every down_proj in float (a_bit 8), and lm_head stays float.
FLOAT_LINEARS = ["lm_head", "re:.*down_proj$"]
OBSERVERS = ("batch_mean", "minmax", "static_minmax")
log = logging.getLogger("vs_llm_compressor")


def require_llmcompressor() -> None:
    """Exit with one line naming the extra when llm-compressor is not installed."""
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        sys.exit(f'vs_llm_compressor: llmcompressor is not installed; install the extra: pip install -e ".[{EXTRA}]"')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="quantize runs per quantizer (median, min, max)")
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="WikiText-2 token budget")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--calib-n", type=int, default=50, help="first N of the 50 calibration texts")
    parser.add_argument(
        "--their-observer",
        default="batch_mean",
        help="llm-compressor activation observer: batch_mean (our act_method 1 rule, registered here), "
        "minmax (its default, moving average) or static_minmax (global extremes)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (vs_llm_compressor.json and .md)")
    args = parser.parse_args()
    checks = (
        ("--repeats", args.repeats >= 1, "an integer >= 1"),
        ("--ppl-tokens", args.ppl_tokens >= 2, "an integer >= 2"),
        ("--block-size", args.block_size >= 2, "an integer >= 2"),
        ("--calib-n", 1 <= args.calib_n <= 50, "an integer in [1, 50]"),
        ("--their-observer", args.their_observer in OBSERVERS, ", ".join(OBSERVERS)),
    )
    for name, ok, valid in checks:
        if not ok:
            parser.exit(2, f"vs_llm_compressor: error: {name}: valid: {valid}\n")
    return args


def register_batch_mean_observer() -> None:
    """Register ``batch_mean`` with llm-compressor: the mean over batches of each batch's min and max,
    our act_method 1 rule (llm-compressor has a moving average and the global extremes, not this)."""
    from llmcompressor.observers import Observer

    if "batch_mean" in Observer.registered_names():
        return

    @Observer.register("batch_mean")
    class BatchMeanMinMaxObserver(Observer):
        _stats_attrs = ["min_vals", "max_vals", "batches"]  # noqa: RUF012 (the base class declares it a list)

        def update_statistics_from_observed(self, observed: torch.Tensor) -> None:
            low, high = torch.amin(observed, dim=(0, -1)), torch.amax(observed, dim=(0, -1))
            n = getattr(self, "batches", 0)
            if n:  # running mean of the per-batch extremes
                low = self.min_vals + (low - self.min_vals) / (n + 1)
                high = self.max_vals + (high - self.max_vals) / (n + 1)
            self.min_vals, self.max_vals, self.batches = low, high, n + 1


def their_recipe(observer: str) -> list[Any]:
    """SmoothQuant then W8A8 by round-to-nearest (no GPTQ), matching our m1 + W8A8 as far as it can."""
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
    inputs = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "tensor", "dynamic": False}
    inputs["observer"] = observer
    scheme = {"targets": ["Linear"], "weights": weights, "input_activations": inputs}
    return [
        SmoothQuantModifier(smoothing_strength=ALPHA),  # default mappings: norm -> q,k,v and norm -> gate,up, as m1
        QuantizationModifier(config_groups={"group_0": scheme}, ignore=FLOAT_LINEARS),
    ]


def write_hf_directory(directory: Path, loaded: LoadedModel) -> None:
    """The GGUF-converted float model as a plain HF directory that both quantizers load from.

    The GGUF loader leaves a ``quantization_config`` naming GGUF in the config (metadata only, the
    tensors are float); llm-compressor refuses a model whose saved config names another quantizer.
    """
    FloatModelCodec(resolve_model_source(loaded.source), "cpu", False, None).write(loaded, directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    loaded.tokenizer.save_pretrained(directory)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def quantize_ours(model: torch.nn.Module, tokenizer: Any, batches: list, args: argparse.Namespace) -> dict[str, float]:
    """Our W8A8 m1 (act_method 1, the reference's llama2 defaults) in place: total and per-stage seconds."""
    cfg = QuantConfig(calib_file=str(CALIB), anti_method="m1", anti_params={"alpha": ALPHA}, act_method=1)
    result, seconds = timed(lambda: quantize(model, tokenizer, cfg, Preset(NO_MEMO, calib_data=batches)))
    return {"total": seconds, **result.timings}


def quantize_theirs(
    model: torch.nn.Module, tokenizer: Any, batches: list, args: argparse.Namespace
) -> dict[str, float]:
    """llm-compressor's oneshot on the same token ids, in place: its total seconds."""
    from datasets import Dataset
    from llmcompressor import oneshot

    rows = {
        "input_ids": [b["input_ids"][0].tolist() for b in batches],
        "attention_mask": [b["attention_mask"][0].tolist() for b in batches],
    }
    dataset = Dataset.from_dict(rows)
    recipe = their_recipe(args.their_observer)
    _, seconds = timed(
        lambda: oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=dataset,
            recipe=recipe,
            num_calibration_samples=len(batches),
            max_seq_length=max(len(ids) for ids in rows["input_ids"]),
            shuffle_calibration_samples=False,
            batch_size=1,
        )
    )
    return {"total": seconds}


QUANTIZERS: dict[str, Callable[[torch.nn.Module, Any, list, argparse.Namespace], dict[str, float]]] = {
    "ours": quantize_ours,
    "theirs": quantize_theirs,
}


Seconds = dict[str, list[dict[str, float]]]
Ppls = dict[str, list[float]]


def measure(
    float_dir: Path,
    tokenizer: Any,
    batches: list,
    args: argparse.Namespace,
    after_repeat: Callable[[Seconds, Ppls], None],
) -> None:
    """Quantize seconds (total and stages) and perplexity of every repeat of each quantizer, each run on
    a fresh float copy; ``after_repeat`` gets everything measured so far after each repeat."""
    times: Seconds = {name: [] for name in QUANTIZERS}
    ppls: dict[str, list[float]] = {name: [] for name in QUANTIZERS}
    for r in range(args.repeats):
        # Alternate who goes first so a drift in machine load does not favour one side.
        for name in list(QUANTIZERS)[:: 1 if r % 2 == 0 else -1]:
            model = load_model(str(float_dir)).model  # a fresh float copy, not timed
            times[name].append(QUANTIZERS[name](model, tokenizer, batches, args))
            ppls[name].append(perplexity(model, tokenizer, args))
            log.info("repeat %d %s: %.1f s, ppl %.4f", r + 1, name, times[name][-1]["total"], ppls[name][-1])
            del model
        after_repeat(times, ppls)


def perplexity(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace) -> float:
    return wikitext_perplexity(model, tokenizer, WIKITEXT, max_tokens=args.ppl_tokens, block_size=args.block_size).ppl


def versions() -> dict[str, str]:
    packages = ("torch", "transformers", "llmcompressor", "compressed-tensors", "datasets")
    return {p: metadata.version(p) for p in packages}


def run(args: argparse.Namespace) -> None:
    """Measure everything; the result JSON is rewritten after every repeat (an interrupted run keeps
    the repeats it finished)."""
    register_batch_mean_observer()
    gguf = load_model(str(MODEL))
    tokenizer = gguf.tokenizer
    batches = tokenize_texts(tokenizer, read_calib_texts(CALIB)[: args.calib_n])
    float_ppl = perplexity(gguf.model, tokenizer, args)
    log.info("float ppl %.4f", float_ppl)

    def write(seconds: Seconds, ppls: Ppls) -> None:
        result = summarize(float_ppl, seconds, ppls, batches, args)
        path = write_result("vs_llm_compressor", results_dir=args.out, **result)
        log.info("wrote %s (%d of %d repeats)", path, result["settings"]["repeats_done"], args.repeats)

    with tempfile.TemporaryDirectory(prefix="vs_llmc_") as tmp:
        write_hf_directory(Path(tmp), gguf)
        del gguf
        measure(Path(tmp), tokenizer, batches, args, write)


def summarize(float_ppl: float, seconds: Seconds, ppls: Ppls, batches: list, args: argparse.Namespace) -> dict:
    """``write_result`` arguments (title, settings, figures, notes) from the repeats measured so far."""
    times = {name: [run["total"] for run in seconds[name]] for name in QUANTIZERS}
    our_stages = {stage: statistics.median(run[stage] for run in seconds["ours"]) for stage in seconds["ours"][0]}
    increase = {name: [p - float_ppl for p in ppls[name]] for name in QUANTIZERS}
    ppl_ratio = [o / t for o, t in zip(increase["ours"], increase["theirs"])]
    time_ratio = [o / t for o, t in zip(times["ours"], times["theirs"])]
    figures = [
        Figure("WikiText-2 ppl, float", [float_ppl], unit="ppl"),
        Figure("WikiText-2 ppl, ours (W8A8 m1)", ppls["ours"], unit="ppl"),
        Figure("WikiText-2 ppl, llm-compressor (SmoothQuant + W8A8)", ppls["theirs"], unit="ppl"),
        Figure("ppl increase over float, ours", increase["ours"], unit="ppl"),
        Figure("ppl increase over float, llm-compressor", increase["theirs"], unit="ppl"),
        Figure("ppl increase over float, ours / llm-compressor", ppl_ratio, goal=1.0),
        Figure("quantize time, ours", times["ours"], unit="s"),
        Figure("quantize time, llm-compressor", times["theirs"], unit="s"),
        Figure("quantize time, ours / llm-compressor", time_ratio, goal=1.0),
    ]
    # None: a single repeat cannot show it
    deterministic = all(len(set(ppls[name])) == 1 for name in QUANTIZERS) if len(ppls["ours"]) > 1 else None
    return {
        "title": "W8A8 SmoothQuant on SmolLM2-135M: ours vs llm-compressor (WikiText-2 ppl increase, quantize time)",
        "settings": {
            "model": str(MODEL.relative_to(DATA)),
            "calib_file": str(CALIB.relative_to(DATA)),
            "calib_texts": len(batches),
            "calib_tokens": batch_tokens(batches),
            "max_seq_length": max(int(b["input_ids"].shape[1]) for b in batches),
            "wikitext": str(WIKITEXT.relative_to(DATA)),
            "ppl_tokens": args.ppl_tokens,
            "block_size": args.block_size,
            "repeats": args.repeats,
            "repeats_done": len(ppls["ours"]),
            "alpha": ALPHA,
            "float_linears": FLOAT_LINEARS,
            "their_activation_observer": args.their_observer,
            "torch_threads": torch.get_num_threads(),
            "versions": versions(),
        },
        "figures": figures,
        "notes": notes(deterministic, our_stages),
    }


def notes(deterministic: bool | None, stages: dict[str, float]) -> list[str]:
    """What differs between the two recipes and what the timings contain."""
    determinism = {
        True: "Perplexity is deterministic: every repeat of each quantizer gave the same value.",
        False: "Perplexity varied between repeats: the ppl figures are medians, see runs.",
        None: "Perplexity determinism not checked: one repeat only.",
    }
    return [
        determinism[deterministic],
        "Same on both sides: float model (GGUF converted once, saved as an HF directory, loaded fresh for "
        "every run), token ids of the 50 texts (one text per batch, no truncation, no padding), SmoothQuant "
        "alpha 0.5 on norm->q,k,v and norm->gate,up, int8 symmetric per-channel weights by round-to-nearest, "
        "static per-tensor asymmetric int8 activations, lm_head and every down_proj in float.",
        "SmoothQuant scales differ: ours s = amax^a / wmax^(1-a) with amax = max|x| per channel; "
        "llm-compressor's uses (max - min) per channel and 2*wmax. A common factor cancels, so the two agree "
        "on channels whose range is symmetric about 0 and differ on lopsided ones.",
        "Weight range: ours scale = max|W|/127, integers in [-127, 127]; compressed-tensors scale = "
        "max|W|/127.5, integers in [-128, 127].",
        "Activation ranges: ours are calibrated decoder layer by decoder layer with earlier layers quantized "
        "(weights and activations); llm-compressor 0.14 calibrates with quantization disabled, so every layer's "
        "ranges come from float (smoothed) inputs.",
        "Activation observer: with --their-observer batch_mean llm-compressor uses a small observer registered "
        "by this benchmark with our act_method 1 rule (mean over batches of each batch's min and max); its "
        "stock default 'minmax' is a moving average (constant 0.01) that weights the first batches most.",
        "Their model is evaluated in compressed-tensors' fake-quant form (quantize-dequantize of weights and "
        "inputs in float); ours in its integer form (int8 operands, float32 accumulation), as saved.",
        "Quantize time is the wall clock of quantize.pipeline.quantize / llmcompressor.oneshot only, with the "
        "calibration texts already tokenized. Ours: observe float stats, smooth, observe range_params, "
        "then one running calibration pass layer by layer that quantizes each layer's weights (one layer pass "
        "per layer plus a float matmul per linear for the SQNR report). llm-compressor: torch.fx tracing of "
        "the model into per-layer subgraphs, then per modifier (SmoothQuant, then quantization) a calibration "
        "pass and a propagation pass per layer.",
        "Ours, median seconds per stage: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in stages.items() if k != "total"),
    ]


def main() -> None:
    args = parse_args()
    require_llmcompressor()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args)
    for f in json.loads(args.out.read_text())["figures"]:
        print(f"{f['name']}: {f['value']:.4f} [{f['min']:.4f}, {f['max']:.4f}] {f['unit']}")


if __name__ == "__main__":
    main()
