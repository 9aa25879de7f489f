"""Layer-wise quantization (issue 15): memory and time of ``quant-llama`` W8A8-m1, in memory vs layer by layer.

Three parts, each measurement a fresh process (``--child``) that notes its resident set after the
imports (the runtime), resets the kernel's peak counter, runs ``quant.runner.quantize_to_directory``
and reads the peak (``VmHWM``):

- ``smollm2``: SmolLM2-135M (GGUF), the 50 BoolQ calibration texts, both paths alternating
  A B A B: (peak RSS − runtime) / float model bytes, and quantize time / one float forward over
  the calibration set (measured in the same process, after the quantization).
- ``llama7b``: a random-weight LLaMA with LLaMA-2-7B's shapes (32 layers, hidden 4096, MLP 11008,
  32 heads, vocab 32000) in bf16, written shard by shard into ``--workdir`` (outside the
  repository; deleted afterwards), quantized layer-wise with 4 calibration texts of 128 tokens:
  peak RSS, seconds per layer, output size.
- ``llama70b``: 1- and 2-layer slices at LLaMA-3.1-70B width (hidden 8192, MLP 28672, 64 heads,
  8 KV heads, vocab 128256): peak RSS of each and the 80-layer peak extrapolated from their
  difference.

    python -m benchmarks.layerwise smollm2 [--pairs 2]
    python -m benchmarks.layerwise llama7b --workdir /tmp/bench7b
    python -m benchmarks.layerwise llama70b --workdir /tmp/bench70b
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BOOLQ_CALIB, REPO_ROOT, SMOLLM2, Figure, write_result
from benchmarks.memory import release_free_heap, reset_peak_rss, status_kib

MIB = 2**20
GIB = 2**30
LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)
LLAMA31_70B_WIDTH = dict(
    hidden_size=8192,
    intermediate_size=28672,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
    rope_theta=500000.0,
)
CALIB_TEXTS, CALIB_TOKENS = 4, 128


# -- a random checkpoint, shard by shard ------------------------------------------------------


def write_random_llama(directory: Path, shape: dict[str, Any], num_layers: int, seed: int = 0) -> int:
    """A random bf16 LLaMA checkpoint: one safetensors shard per decoder layer (plus one for the
    embeddings, final norm and lm_head), the index, config.json and a tokenizer. Returns its bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    directory.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**{**shape, "num_hidden_layers": num_layers}, tie_word_embeddings=False)
    config.dtype = torch.bfloat16
    config.save_pretrained(directory)
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    drawn: dict[tuple[int, int], torch.Tensor] = {}

    def randn(rows: int, cols: int, layer: int = 0) -> torch.Tensor:
        """N(0, 0.02²) bf16 weights: one draw per shape, rolled by a different offset for each layer
        (distinct layers at the cost of a copy; drawing 6.7e9 normals on 2 shared cores takes ~1 hour)."""
        if (rows, cols) not in drawn:
            drawn[(rows, cols)] = (torch.randn(rows, cols, generator=gen) * 0.02).to(torch.bfloat16)
        return torch.roll(drawn[(rows, cols)], shifts=(layer * 7919) % (rows * cols))

    count = num_layers + 1
    weight_map: dict[str, str] = {}
    total = 0

    def write(index: int, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        name = f"model-{index:05d}-of-{count:05d}.safetensors"
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())

    write(
        1,
        {
            "model.embed_tokens.weight": randn(config.vocab_size, hidden),
            "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
            "lm_head.weight": randn(config.vocab_size, hidden),
        },
    )
    for i in range(num_layers):
        p = f"model.layers.{i}."
        write(
            i + 2,
            {
                p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                p + "self_attn.q_proj.weight": randn(hidden, hidden),
                p + "self_attn.k_proj.weight": randn(kv, hidden),
                p + "self_attn.v_proj.weight": randn(kv, hidden),
                p + "self_attn.o_proj.weight": randn(hidden, hidden),
                p + "mlp.gate_proj.weight": randn(inter, hidden),
                p + "mlp.up_proj.weight": randn(inter, hidden),
                p + "mlp.down_proj.weight": randn(hidden, inter),
            },
        )
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    _write_tokenizer(directory, config.vocab_size)
    return total


def _write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A byte-level BPE trained on the BoolQ calibration texts (ids stay below ``vocab_size``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from quant.calib_data import read_calib_texts

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 8000),
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_calib_texts(str(BOOLQ_CALIB)), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)


def calibration_texts(model_dir: Path) -> list[str]:
    """``CALIB_TEXTS`` BoolQ calibration texts cut to ``CALIB_TOKENS`` tokens of the model's tokenizer."""
    from transformers import AutoTokenizer

    from quant.calib_data import read_calib_texts

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = []
    for text in read_calib_texts(str(BOOLQ_CALIB)):
        ids = tokenizer(text).input_ids
        if len(ids) >= CALIB_TOKENS:
            texts.append(tokenizer.decode(ids[:CALIB_TOKENS]))
        if len(texts) == CALIB_TEXTS:
            return texts
    raise RuntimeError("not enough long calibration texts")


# -- one measurement in a fresh process -------------------------------------------------------


def measure(model: str, save: str, layerwise: bool, calib: dict[str, Any], float_forward: bool) -> dict[str, Any]:
    """Quantize once in this process (W8A8, m1, act_method 1, L0); sizes in MiB, times in s."""
    import transformers.modeling_utils  # noqa: F401  (the runtime: imported before it is measured)

    from quant.config import QuantConfig
    from quant.runner import quantize_to_directory

    release_free_heap()
    runtime = status_kib("VmRSS") / 1024
    reset_peak_rss()
    cfg = QuantConfig.from_dict(
        dict(
            model_path=model,
            save_directory=save,
            w_bit=8,
            a_bit=8,
            anti_method="m1",
            act_method=1,
            disable_level="L0",
            **calib,
        )
    )
    t, cpu = time.perf_counter(), _cpu_seconds()
    summary = quantize_to_directory(cfg, overwrite=True, layerwise=layerwise)
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    peak = status_kib("VmHWM") / 1024
    result = {
        "cpu_s": cpu,
        "runtime_mib": runtime,
        "peak_rss_mib": peak,
        "quantize_s": seconds,
        "output_bytes": summary["bytes"],
        "timings": summary["timings"],
        "float_layers": summary["float_layers"],
    }
    if float_forward:
        result.update(_float_forward(model, cfg))
    return result


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (what a shared machine's load does not inflate)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _float_forward(model: str, cfg: Any) -> dict[str, float]:
    """Seconds of one plain float forward over the calibration set (backbone + lm_head), and the model's MiB."""
    import torch

    from quant.calib_data import calibration_batches
    from quant.model_io import load_model

    loaded = load_model(model)
    batches = calibration_batches(loaded.tokenizer, cfg, "cpu")
    t, cpu = time.perf_counter(), _cpu_seconds()
    with torch.no_grad():
        for batch in batches:
            loaded.model(**batch, use_cache=False)
    seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    model_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in loaded.model.parameters()}.values())
    return {"float_forward_s": seconds, "float_forward_cpu_s": cpu, "model_mib": model_bytes / MIB}


def run_child(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.layerwise", "child", *args]
    out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the three parts ---------------------------------------------------------------------------


def smollm2(pairs: int, workdir: Path, texts: int | None = None) -> None:
    """Both paths on SmolLM2, alternating; ``texts``: the first n BoolQ calibration texts (default all 50)."""
    from quant.calib_data import read_calib_texts

    arms = {"in memory": "False", "layer-wise": "True"}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in arms}
    calib_texts = read_calib_texts(str(BOOLQ_CALIB))[:texts]
    calib = json.dumps({"calib_texts": calib_texts} if texts else {"calib_file": str(BOOLQ_CALIB)})
    for i in range(pairs):
        for label, flag in arms.items():  # A B A B: both arms see the same machine load
            runs[label].append(run_child(str(SMOLLM2), str(workdir / "out"), flag, calib, "True"))
            print(f"pair {i + 1}, {label}: {json.dumps(runs[label][-1])}", flush=True)
        write_smollm2(runs, len(calib_texts))  # after every pair: a stopped run keeps the pairs it finished
    shutil.rmtree(workdir / "out", ignore_errors=True)


def write_smollm2(runs: dict[str, list[dict[str, Any]]], texts: int) -> None:
    """The SmolLM2 figures from the finished pairs (``runs``: per arm, one measurement per pair)."""
    pairs = min(len(rs) for rs in runs.values())
    runs = {label: rs[:pairs] for label, rs in runs.items()}
    figures = []
    for label, rs in runs.items():
        figures += [
            Figure(
                f"(peak RSS − runtime) / float model bytes [{label}]",
                [(r["peak_rss_mib"] - r["runtime_mib"]) / r["model_mib"] for r in rs],
            ),
            Figure(
                f"quantize time / one float forward over the calibration set [{label}]",
                [r["quantize_s"] / r["float_forward_s"] for r in rs],
                goal=2.0,
            ),
            *(
                [
                    Figure(
                        f"quantize CPU time / float forward CPU time [{label}]",
                        [r["cpu_s"] / r["float_forward_cpu_s"] for r in rs],
                    )
                ]
                if all("cpu_s" in r for r in rs)
                else []
            ),
            Figure(f"peak RSS [{label}]", [r["peak_rss_mib"] for r in rs], unit="MiB"),
            Figure(f"quantize time [{label}]", [r["quantize_s"] for r in rs], unit="s"),
        ]
    a, b = runs["in memory"], runs["layer-wise"]
    figures.append(
        Figure(
            "layer-wise / in-memory quantize time, per pair",
            [y["quantize_s"] / x["quantize_s"] for x, y in zip(a, b, strict=True)],
        )
    )
    figures.append(Figure("float model (parameters)", [r["model_mib"] for r in a], unit="MiB"))
    write_result(
        "layerwise_smollm2",
        "Layer-wise vs in-memory quantization: SmolLM2-135M W8A8-m1",
        {
            "model": SMOLLM2.name,
            "recipe": f"W8A8, m1, act_method 1, L0, the first {texts} BoolQ calibration texts",
            "torch threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "pairs": pairs,
            "order": "in memory, layer-wise, alternating",
            "quantize time": "quantize_to_directory: load/read, quantize, write",
        },
        figures,
        raw=runs,
    )


def llama7b(workdir: Path) -> None:
    model = workdir / "llama2-7b-shaped"
    t = time.perf_counter()
    checkpoint_bytes = write_random_llama(model, LLAMA2_7B, LLAMA2_7B["num_hidden_layers"])
    write_s = time.perf_counter() - t
    print(f"wrote {checkpoint_bytes / GIB:.2f} GiB in {write_s:.0f} s", flush=True)
    calib = json.dumps({"calib_texts": calibration_texts(model)})
    try:
        r = run_child(str(model), str(workdir / "out"), "True", calib, "False")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    layers = LLAMA2_7B["num_hidden_layers"]
    figures = [
        Figure("peak RSS while quantizing (layer-wise)", [r["peak_rss_mib"] / 1024], unit="GiB", goal=3.0),
        Figure("runtime RSS before (Python, torch, transformers)", [r["runtime_mib"] / 1024], unit="GiB"),
        Figure("seconds per decoder layer (whole quantize / layers)", [r["quantize_s"] / layers], unit="s"),
        Figure("quantize time (read, quantize, write)", [r["quantize_s"]], unit="s"),
        Figure("output size", [r["output_bytes"] / GIB], unit="GiB"),
        Figure("checkpoint size (bf16)", [checkpoint_bytes / GIB], unit="GiB"),
    ]
    write_result(
        "layerwise_llama7b",
        "Layer-wise quantization of a random LLaMA-2-7B-shaped model (bf16, 13.5 GB)",
        {
            "shape": LLAMA2_7B,
            "recipe": "W8A8, m1, act_method 1, L0",
            "calibration": f"{CALIB_TEXTS} BoolQ texts × {CALIB_TOKENS} tokens",
            "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
        },
        figures,
        raw={"run": r, "checkpoint_write_s": write_s},
    )


def llama70b(workdir: Path) -> None:
    runs = {}
    for layers in (1, 2):
        model = workdir / f"llama70b-width-{layers}"
        write_random_llama(model, LLAMA31_70B_WIDTH, layers)
        calib = json.dumps({"calib_texts": calibration_texts(model)})
        try:
            runs[layers] = run_child(str(model), str(workdir / "out"), "True", calib, "False")
        finally:
            shutil.rmtree(model, ignore_errors=True)
            shutil.rmtree(workdir / "out", ignore_errors=True)
        print(f"{layers} layer(s): {json.dumps(runs[layers])}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    per_layer = runs[2]["peak_rss_mib"] - runs[1]["peak_rss_mib"]
    extrapolated = runs[2]["peak_rss_mib"] + 78 * max(per_layer, 0.0)
    figures = [
        Figure("peak RSS, 1 decoder layer", [runs[1]["peak_rss_mib"] / 1024], unit="GiB"),
        Figure("peak RSS, 2 decoder layers", [runs[2]["peak_rss_mib"] / 1024], unit="GiB"),
        Figure("peak RSS growth per added layer", [per_layer / 1024], unit="GiB"),
        Figure("extrapolated peak RSS, 80 layers (2-layer peak + 78 × growth)", [extrapolated / 1024], unit="GiB"),
        Figure("seconds per decoder layer (2-layer run / 2)", [runs[2]["quantize_s"] / 2], unit="s"),
    ]
    write_result(
        "layerwise_llama70b",
        "Layer-wise quantization at LLaMA-3.1-70B width: 1- and 2-layer slices",
        {
            "shape": LLAMA31_70B_WIDTH,
            "recipe": "W8A8, m1, act_method 1, L0",
            "calibration": f"{CALIB_TEXTS} BoolQ texts × {CALIB_TOKENS} tokens",
        },
        figures,
        raw=runs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["smollm2", "llama7b", "llama70b", "child"])
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--texts", type=int, default=None, help="smollm2: the first n calibration texts (default 50)")
    parser.add_argument("--workdir", default=None, help="scratch directory outside the repository (deleted)")
    args = parser.parse_args()
    if args.part == "child":
        model, save, layerwise, calib, float_forward = args.args
        print(json.dumps(measure(model, save, layerwise == "True", json.loads(calib), float_forward == "True")))
        return
    workdir = Path(args.workdir or f"/tmp/benchmark-layerwise-{os.getpid()}")
    if REPO_ROOT in workdir.resolve().parents:
        parser.exit(2, "benchmarks.layerwise: error: --workdir: must be outside the repository\n")
    {
        "smollm2": lambda: smollm2(args.pairs, workdir, args.texts),
        "llama7b": lambda: llama7b(workdir),
        "llama70b": lambda: llama70b(workdir),
    }[args.part]()


if __name__ == "__main__":
    main()
