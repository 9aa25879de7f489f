"""SmolLM2-135M: W8A8 (m1) vs + KV-cache int8 vs + attention quantization.

For each recipe: quantize a fresh copy of the float model, save it, reload it from disk (the
model evaluated is the one that was saved) and measure WikiText-2 perplexity on a fixed token
budget, plus the size of the output on disk. Not a test: it takes minutes on a CPU.

    PYTHONPATH=$PWD QUANT_DATA_DIR=/work/shared/data python benchmarks/kv_attention.py --out /tmp/kv_attention
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BOOLQ_CALIB as CALIB
from benchmarks.common import SMOLLM2 as MODEL
from benchmarks.common import WIKITEXT
from eval.perplexity import wikitext_perplexity
from quant.config import QuantConfig
from quant.export import save_quantized
from quant.memo import MemoryMemo
from quant.model_io import load_model
from quant.pipeline import quantize
from quant.reload import load_quantized

# name -> QuantConfig fields on top of the shared W8A8 m1 recipe (default llama2 fallback:
# every down_proj and lm_head stay float).
RECIPES: dict[str, dict[str, Any]] = {
    "w8a8_m1": {},
    "w8a8_m1_kv_int8": {"use_kvcache_quant": True},
    "w8a8_m1_fa_quant": {"use_fa_quant": True},
    "w8a8_m1_fa_quant_amp3": {"use_fa_quant": True, "fa_amp": 3},
}


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's distinct tensors (tied weights once): the float model's size as safetensors."""
    seen: dict[int, int] = {}
    for t in model.state_dict().values():
        seen[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def run(out_dir: Path, max_tokens: int, block_size: int) -> list[dict[str, Any]]:
    loaded = load_model(str(MODEL))
    float_model, tokenizer = loaded.model, loaded.tokenizer
    base = QuantConfig(model_path=str(MODEL), calib_file=str(CALIB), anti_method="m1")
    # The float model's input statistics and its smoothing serve every recipe (they differ after it).
    memo = MemoryMemo()

    rows = []
    t = time.perf_counter()
    ppl = wikitext_perplexity(float_model, tokenizer, WIKITEXT, max_tokens=max_tokens, block_size=block_size)
    rows.append(
        {"recipe": "float", "ppl": ppl.ppl, "n_tokens": ppl.n_tokens, "bytes": state_dict_bytes(float_model)}
        | {"eval_s": time.perf_counter() - t}
    )
    print(json.dumps(rows[-1]), flush=True)
    probe = tokenizer("The tower is 324 metres tall, about the same height", return_tensors="pt").input_ids
    for name, fields in RECIPES.items():
        cfg = QuantConfig(**{**base.to_dict(), **fields})
        t = time.perf_counter()
        result = quantize(float_model, tokenizer, cfg, memo)
        model = result.model
        quant_s = time.perf_counter() - t
        target = out_dir / name
        shutil.rmtree(target, ignore_errors=True)
        saved = save_quantized(model, tokenizer, target, quant_type=result.quant_type)
        reloaded = load_quantized(target).model
        with torch.no_grad():
            assert torch.equal(model(probe).logits, reloaded(probe).logits), f"{name}: reload changed the logits"
        del model
        t = time.perf_counter()
        ppl = wikitext_perplexity(reloaded, tokenizer, WIKITEXT, max_tokens=max_tokens, block_size=block_size)
        row = {
            "recipe": name,
            "ppl": ppl.ppl,
            "n_tokens": ppl.n_tokens,
            "bytes": directory_bytes(saved.directory),
            "weight_file_bytes": sum(p.stat().st_size for p in saved.weight_files),
            "quantize_s": quant_s,
            "eval_s": time.perf_counter() - t,
            "schemes": result.scheme_reports,
        }
        if "attention_quant" in result.scheme_reports:
            row["fa_float_layers"] = result.scheme_reports["attention_quant"]["float_layers"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "schemes"}), flush=True)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    float_ppl = rows[0]["ppl"]
    lines = [
        "| recipe | WikiText-2 ppl | Δ vs float | size on disk (MB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['ppl']:.3f} | {r['ppl'] - float_ppl:+.3f} | {r['bytes'] / 1e6:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/kv_attention"))
    parser.add_argument("--max-tokens", type=int, default=8192, help="WikiText-2 token budget per model")
    parser.add_argument("--block-size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = run(args.out, args.max_tokens, args.block_size)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
