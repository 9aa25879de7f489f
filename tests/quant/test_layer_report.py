"""The per-layer report: one row per linear, written next to the weights, plotted; and m2's output
(no linear biases) surviving save → reload."""

import json

import torch

from quant.arch import linear_names
from quant.config import QuantConfig
from quant.export import LAYER_REPORT_FILE, save_quantized
from quant.model_io import LoadedModel
from quant.pipeline import quantize
from quant.reload import load_quantized
from quant.report_plot import plot_layer_sqnr
from quant.runner import save_result
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
]
FIELDS = {
    "name", "status", "reason", "quant_type", "range_param", "quantile_score", "observer", "input_min", "input_max",
    "input_scale", "input_offset", "weight_scale_min", "weight_scale_max", "smooth_scale_min", "smooth_scale_max",
    "sqnr_db", "weight_sqnr_db",
}  # fmt: skip


def test_every_linear_has_a_row_with_its_decision(tiny_tokenizer):
    model = build_tiny_llama("llama3")
    result = quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, anti_method="m4", act_method=3))
    rows = result.layer_report()
    assert [r["name"] for r in rows] == linear_names(model)
    for row in rows:
        assert set(row) == FIELDS
        if row["name"] != "lm_head":  # lm_head is observed only when it may be quantized
            assert row["range_param"] > 0, row["name"]
        assert row["quantile_score"] is None  # computed only for disable_threshold (test_fallback.py)
        if row["status"] == "float":
            assert row["reason"] and row["sqnr_db"] is None
        else:
            assert row["observer"] in ("minmax", "histogram") and row["input_scale"] > 0
            assert 0 < row["weight_scale_min"] <= row["weight_scale_max"]
            assert 10 < row["sqnr_db"] < 80, row  # int8 error: tens of dB
    q = next(r for r in rows if r["name"] == "model.layers.0.self_attn.q_proj")
    assert q["smooth_scale_min"] < q["smooth_scale_max"]  # m4 smoothed its input


# The SQNR of a static linear against an independent whole-model pass:
# tests/quant/test_running_calibration.py.


def test_w8a16_layers_get_an_sqnr_too(tiny_tokenizer):
    result = quantize(build_tiny_llama("llama2"), tiny_tokenizer, QuantConfig(calib_texts=TEXTS, a_bit=16))
    rows = [r for r in result.layers if r.status == "quantized"]
    assert rows and all(r.sqnr_db is not None and r.sqnr_db > 30 and r.observer is None for r in rows)


def test_report_is_written_next_to_the_weights_and_plotted(tmp_path, tiny_tokenizer):
    model = build_tiny_llama("llama2")
    result = quantize(model, tiny_tokenizer, QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_level="L2"))
    loaded = LoadedModel(model, tiny_tokenizer, "tiny", torch.float32)
    saved = save_result(result, loaded, str(tmp_path / "out"))
    rows = json.loads((saved.directory / LAYER_REPORT_FILE).read_text())
    assert rows == json.loads(json.dumps(result.layer_report()))
    png = plot_layer_sqnr(rows, tmp_path / "sqnr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_m2_adds_no_linear_bias_and_survives_save_and_reload(tmp_path, tiny_tokenizer):
    """m2 applies its scales but not its shift (SPEC §3): every norm bias zero, no linear bias, and the
    saved model reloads to identical logits."""
    for a_bit in (8, 16):
        model = build_tiny_llama("llama3")
        cfg = QuantConfig(
            calib_texts=TEXTS, anti_method="m2", a_bit=a_bit, disable_names=["model.layers.0.self_attn.k_proj"]
        )
        result = quantize(model, tiny_tokenizer, cfg)
        norm_biases = {n: p for n, p in model.named_parameters() if n.endswith("norm.bias")}
        assert norm_biases and all(float(p.abs().max()) == 0 for p in norm_biases.values())
        out = save_quantized(model, tiny_tokenizer, tmp_path / f"out{a_bit}", quant_type=result.quant_type)
        description = json.loads(out.description_file.read_text())
        assert not any(n.endswith("_proj.bias") for n in description)
        reloaded = load_quantized(out.directory)
        x = tiny_tokenizer("Ghost in the Shell was produced in 1995", return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.equal(model(x).logits, reloaded.model(x).logits)
