"""Anti-outlier methods m1..m6: each is a change of basis (float logits unchanged), each [exact]
formula against an independent computation, and the searches (m3, m6) on cases with a known answer."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from quant.anti_outlier import REGISTRY, apply_anti_outlier, check_anti_params, get_method, needs_statistics
from quant.anti_outlier.base import PairContext
from quant.anti_outlier.m3_awq import awq_scales, awq_transform
from quant.anti_outlier.m5_cbq import split_gap_minus_spread
from quant.anti_outlier.m6_flex_smooth import flex_error, flex_smooth_transform, reference_rms
from quant.arch import NORM_PAIRS, linear_names
from quant.calib_data import tokenize_texts
from quant.errors import QuantInputError
from quant.input_stats import observe_linear_inputs
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove.",
]
CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "anti_method"


def _smooth(model, tokenizer, method, texts=TEXTS, **params):
    batches = tokenize_texts(tokenizer, texts)
    names = [n for n in linear_names(model) if n != "lm_head"]
    stats = observe_linear_inputs(model, batches, names) if needs_statistics(method) else None
    return apply_anti_outlier(model, method, stats, params, batches=batches)


def _capture(model, module, batches, output=True):
    """Every token's output (or input) of ``module`` over ``batches``, flattened (tokens, features)."""
    seen = []

    def hook(_m, args, out):
        x = out if output else args[0]
        seen.append(x.detach().reshape(-1, x.shape[-1]))

    handle = module.register_forward_hook(hook)
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    return seen


@pytest.mark.parametrize("family", ["llama2", "llama3"])
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_leaves_float_logits_unchanged(method, family, tiny_tokenizer):
    model = build_tiny_llama(family).double()
    x = tiny_tokenizer("Ghost in the Shell is an anime film produced in 1995.", return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(x).logits
    report = _smooth(model, tiny_tokenizer, method)
    with torch.no_grad():
        after = model(x).logits
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9)
    assert len(report.scales) == len(model.model.layers) * len(get_method(method).pairs)
    assert any((s - 1).abs().max() > 0.05 for s in report.scales.values()), "scales must not be trivial"


def test_norm_biases_follow_the_spec(tiny_tokenizer):
    names = {}
    for method in ("m1", "m6"):
        model = build_tiny_llama("llama2")
        _smooth(model, tiny_tokenizer, method)
        names[method] = {n for n, _ in model.named_parameters()}
    assert {"model.norm.bias", "model.layers.1.post_attention_layernorm.bias"} <= names["m1"]
    assert not any(n.endswith("norm.bias") for n in names["m6"]), "m6 adds no norm bias (SPEC §3)"


def test_m1_scales_match_formula(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    layer = model.model.layers[0]
    x = torch.cat(_capture(model, layer.input_layernorm, tokenize_texts(tiny_tokenizer, TEXTS)))
    amax = x.abs().amax(dim=0)
    w = torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight])
    expected = (amax.sqrt() / w.abs().amax(dim=0).sqrt()).clamp(min=1e-5)
    norm_before = layer.input_layernorm.weight.detach().clone()
    report = _smooth(model, tiny_tokenizer, "m1")
    assert torch.allclose(report.scales["model.layers.0.input_layernorm"], expected, rtol=1e-6)
    assert torch.allclose(layer.input_layernorm.weight, norm_before / expected, rtol=1e-6)


def test_m2_scales_outlier_channels_and_applies_no_shift(tiny_tokenizer):
    """SPEC §3: selected channels get sqrt(thres / wmax), thres = cmax − (cmax + cmin)/2; the shift is
    not applied, so the norm bias stays zero and no linear gains a bias."""
    model = build_tiny_llama("llama2")
    layer = model.model.layers[0]
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    per_batch = _capture(model, layer.post_attention_layernorm, batches)
    x = torch.cat(per_batch)
    cmax, cmin = x.amax(dim=0), x.amin(dim=0)
    outlier = torch.zeros_like(cmax, dtype=torch.bool)
    for xb in per_batch:  # |x - mean| > 7 std in any batch, mean/std over the whole batch
        outlier |= ((xb - xb.mean()).abs() > 7 * xb.std()).any(dim=0)
    assert 0 < int(outlier.sum()) < x.shape[1], "the tiny model must have a few outlier channels"
    w_gate, w_up = layer.mlp.gate_proj.weight.detach().clone(), layer.mlp.up_proj.weight.detach().clone()
    wmax = torch.cat([w_gate, w_up]).abs().amax(dim=0)
    expected = torch.where(outlier, ((cmax - (cmax + cmin) / 2) / wmax).sqrt(), torch.ones_like(cmax))
    norm_w = layer.post_attention_layernorm.weight.detach().clone()

    report = _smooth(model, tiny_tokenizer, "m2")
    name = "model.layers.0.post_attention_layernorm"
    assert torch.allclose(report.scales[name], expected, rtol=1e-5, atol=1e-6)
    assert report.shifts == {}
    assert torch.allclose(layer.post_attention_layernorm.weight, norm_w / expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.post_attention_layernorm.bias, torch.zeros_like(norm_w))
    assert not any(lin.bias is not None for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.self_attn.q_proj))
    assert torch.allclose(layer.mlp.up_proj.weight, w_up * expected, rtol=1e-5, atol=1e-6)


def test_m3_scales_come_from_the_first_batch_only(tiny_tokenizer):
    reports = []
    for texts in ([TEXTS[0], TEXTS[1]], [TEXTS[0], TEXTS[2]]):
        reports.append(_smooth(build_tiny_llama("llama3"), tiny_tokenizer, "m3", texts=texts))
    for name, scales in reports[0].scales.items():
        assert torch.equal(scales, reports[1].scales[name]), name
    # And the chosen ratio's scales are the AWQ formula on that batch's mean |x|.
    model = build_tiny_llama("llama3")
    x = _capture(model, model.model.layers[0].input_layernorm, tokenize_texts(tiny_tokenizer, TEXTS[:1]))[0]
    report = _smooth(model, tiny_tokenizer, "m3", texts=TEXTS[:1])
    name = "model.layers.0.input_layernorm"
    ratio = report.details[name]["ratio"]
    s = x.abs().mean(dim=0).pow(ratio).clamp(min=1e-4)
    assert torch.allclose(report.scales[name], s / (s.max() * s.min()).sqrt(), rtol=1e-6)


def _context(weight: torch.Tensor, inputs: torch.Tensor, params: dict) -> PairContext:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    norm = nn.Module()
    norm.weight = nn.Parameter(torch.ones(weight.shape[1]))
    return PairContext(0, NORM_PAIRS[0], norm, [linear], params=params, inputs=inputs)


def test_m3_search_finds_the_ratio_whose_scaled_weight_is_exactly_representable():
    """W = C·Q·diag(1/s*) with Q integer rows reaching ±127: quantizing W·s* is exact at r* = 0.5 only."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 6.0, 8, dtype=torch.float64)
    s_star = awq_scales(x.abs().mean(dim=0), 0.5)
    q = torch.randint(-127, 128, (6, 8), generator=gen).double()
    q[:, 0] = 127.0
    c = torch.linspace(0.01, 0.05, 6, dtype=torch.float64).unsqueeze(1)
    weight = (c * q / s_star).float()
    x = x.float()
    transform = awq_transform(_context(weight, x, {"n_grid": 20}))
    assert transform.detail["ratio"] == 0.5
    assert transform.detail["error"] < 1e-10 * float((x @ weight.T).pow(2).mean())
    assert torch.allclose(transform.scales, s_star.float())


def test_m4_v_to_o_averages_scales_over_query_heads_sharing_a_kv_head(tiny_tokenizer):
    model = build_tiny_llama("llama3")  # 4 query heads, 2 KV heads, head_dim 16
    attn = model.model.layers[1].self_attn
    x_o = torch.cat(_capture(model, attn.o_proj, tokenize_texts(tiny_tokenizer, TEXTS), output=False))
    w_o, w_v = attn.o_proj.weight.detach().clone(), attn.v_proj.weight.detach().clone()
    s_o = (x_o.abs().amax(dim=0).pow(0.9) / w_o.abs().amax(dim=0).pow(0.1)).clamp(min=1e-5)  # (4 * 16,)
    # query heads 0, 1 read KV head 0; heads 2, 3 read KV head 1
    s_v = torch.cat([(s_o[0:16] + s_o[16:32]) / 2, (s_o[32:48] + s_o[48:64]) / 2])  # (2 * 16,)
    report = _smooth(model, tiny_tokenizer, "m4")
    assert torch.allclose(report.scales["model.layers.1.self_attn.v_proj"], s_v, rtol=1e-5)
    s_qkv = report.scales["model.layers.1.input_layernorm"]  # v_proj's columns belong to norm → q/k/v
    assert torch.allclose(attn.v_proj.weight, w_v * s_qkv / s_v.unsqueeze(1), rtol=1e-5)
    assert torch.allclose(attn.o_proj.weight, w_o * torch.cat([s_v[:16], s_v[:16], s_v[16:], s_v[16:]]), rtol=1e-5)


def test_m4_norm_pair_scales_match_formula(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    layer = model.model.layers[0]
    x = torch.cat(_capture(model, layer.post_attention_layernorm, tokenize_texts(tiny_tokenizer, TEXTS)))
    wmax = torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).abs().amax(dim=0)
    expected = (x.abs().amax(dim=0).pow(0.9) / wmax.pow(0.1)).clamp(min=1e-5)
    report = _smooth(model, tiny_tokenizer, "m4")
    assert torch.allclose(report.scales["model.layers.0.post_attention_layernorm"], expected, rtol=1e-5)


def _gap_split_by_enumeration(extremes: list[float], fewer_first: bool) -> int:
    """Independent: every split k (outer = first k), metric |outer[k-1] − inner[0]| − var(inner)."""
    scored = []
    for k in range(1, len(extremes)):
        inner = extremes[k:]
        mean = sum(inner) / len(inner)
        var = sum((v - mean) ** 2 for v in inner) / (len(inner) - 1) if len(inner) > 1 else 0.0
        scored.append((abs(extremes[k - 1] - inner[0]) - var, k))
    ordered = scored if fewer_first else scored[::-1]
    return max(ordered, key=lambda item: item[0])[1]  # max keeps the first of equal maxima


def test_gap_split_matches_enumeration_and_the_search_order_on_ties():
    values = torch.tensor([9.0, 5.0, 4.0, 0.3, 0.3, 0.25, 0.2])  # sorted from the most extreme inwards
    for fewer_first in (True, False):
        expected = _gap_split_by_enumeration(values.tolist(), fewer_first)
        assert split_gap_minus_spread(values, fewer_first) == expected
    tie = torch.tensor([8.0, 4.0, 2.0])  # k = 1: 4 − var(4, 2) = 2; k = 2: 2 − 0 = 2
    assert split_gap_minus_spread(tie, fewer_first=True) == 1
    assert split_gap_minus_spread(tie, fewer_first=False) == 2


def test_m5_scales_match_formula(tiny_tokenizer):
    model = build_tiny_llama("llama2")
    layer = model.model.layers[0]
    x = torch.cat(_capture(model, layer.input_layernorm, tokenize_texts(tiny_tokenizer, TEXTS)))

    def outliers(v, positive):  # independent: IQR fence, then the enumerated gap split
        q20, q80 = float(torch.quantile(v, 0.2)), float(torch.quantile(v, 0.8))
        fence = q80 + 1.5 * (q80 - q20) if positive else q20 - 1.5 * (q80 - q20)
        beyond = [float(t) for t in v if (t > fence if positive else t < fence)]
        if len(beyond) > 1:
            extremes = sorted(beyond, reverse=positive)
            fence = extremes[_gap_split_by_enumeration(extremes, fewer_first=positive)]
        return v > fence if positive else v < fence

    cmax, cmin = x.amax(dim=0), x.amin(dim=0)
    pos_out, neg_out = outliers(cmax, True), outliers(cmin, False)
    pos = torch.where(pos_out, (cmax / cmax[~pos_out].max()).pow(0.7), torch.ones_like(cmax))
    neg = torch.where(neg_out, (cmin / cmin[~neg_out].min()).pow(0.7), torch.ones_like(cmin))
    assert 0 < int(pos_out.sum()) < 8, "the tiny model's boosted channels must be found as outliers"
    report = _smooth(model, tiny_tokenizer, "m5")
    assert torch.allclose(report.scales["model.layers.0.input_layernorm"], torch.maximum(pos, neg), rtol=1e-5)


def test_m6_error_formula_matches_independent_int8_arithmetic():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=gen) * torch.tensor([1.0, 8.0, 0.5, 1.0, 2.0, 0.1])
    w = torch.randn(5, 6, generator=gen)
    s = torch.rand(6, generator=gen) + 0.5
    xs, ws = x / s, w * s
    lo, hi = min(float(xs.min()), 0.0), max(float(xs.max()), 0.0)
    a_scale = (hi - lo) / 255
    a_off = round(-lo / a_scale) - 128
    x_q = ((xs / a_scale + a_off).round().clamp(-128, 127) - a_off) * a_scale
    w_scale = ws.abs().amax(dim=1, keepdim=True) / 127
    w_q = (ws / w_scale).round().clamp(-127, 127) * w_scale
    ref = x @ w.T
    expected = ((x_q @ w_q.T - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    assert flex_error(x, w, s, ref, reference_rms(ref)) == pytest.approx(expected, rel=1e-4)


def test_m6_search_finds_the_exactly_quantizable_alpha_beta():
    """x = Z·diag(s*), W = 2·R·E·diag(1/s*) with Z on the int8 activation grid and per-row weight
    grids, column extremes of Z and 2·R·E equal: at α = β = 0.5 the scales are s* and the int8
    error is zero; everywhere else it is not."""
    gen = torch.Generator().manual_seed(1)
    col_max = torch.tensor([154.0, 102.0, 60.0, 20.0])  # per channel, both for Z and for 2·R·E
    r = (col_max / 2).unsqueeze(1)  # row i of W·s* is ±r_i·2 or 0; row scale 2·r_i / 127
    e = torch.tril(torch.randint(-1, 2, (4, 4), generator=gen)).double()
    e.fill_diagonal_(1.0)
    z = torch.stack([torch.randint(-int(m), int(m) + 1, (16,), generator=gen) for m in col_max], dim=1).double()
    z = z.clamp(min=-101)  # activation grid: min -101, max 154 -> scale 1, offset -27
    z[0] = col_max.double()
    z[1, 1] = -101.0
    s_star = torch.tensor([4.0, 0.5, 2.0, 0.25], dtype=torch.float64)
    x, weight = (z * s_star).float(), ((2 * r.double() * e) / s_star).float()  # exact: powers of two
    transform = flex_smooth_transform(_context(weight, x, {"alpha_steps": 20, "beta_steps": 20}))
    assert (transform.detail["alpha"], transform.detail["beta"]) == (0.5, 0.5)
    assert transform.detail["error"] < 1e-6  # relative RMS error; float32 rounding only
    assert torch.allclose(transform.scales, s_star.float())


def test_anti_params_are_validated_with_clear_errors():
    with pytest.raises(QuantInputError, match=r"anti_params: 'ratio' is not a setting of m3; valid: n_grid"):
        check_anti_params("m3", {"ratio": 0.5})
    with pytest.raises(QuantInputError, match=r"anti_params: n_grid of m3 must be an integer in \[1, 1000\]"):
        check_anti_params("m3", {"n_grid": 0})
    with pytest.raises(QuantInputError, match="anti_params: anti_method none takes no settings"):
        check_anti_params("none", {"alpha": 0.5})
    assert check_anti_params("m6", {"beta_steps": 10}) == {"alpha_steps": 20, "beta_steps": 10}


@pytest.mark.parametrize("method", ["none", *sorted(REGISTRY)])
def test_hydra_choice_of_each_method_matches_the_registry(method):
    """``anti_method=mX`` in Hydra picks conf/anti_method/mX.yaml: same name, the reference's defaults."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{method}.yaml"))
    assert node["name"] == method
    expected = {} if method == "none" else get_method(method).default_params
    assert check_anti_params(method, node["params"]) == expected


def test_cli_selects_methods_by_the_same_names(tmp_path, tiny_model_dir, calib_file):
    from quant.cli import build_parser, config_from_args, main

    for method in REGISTRY:
        args = build_parser().parse_args(["--model_path", "m", "--save_directory", "s", "--anti_method", method])
        assert config_from_args(args)[0].anti_method == method
    out = tmp_path / "out"
    argv = ["--model_path", str(tiny_model_dir), "--save_directory", str(out), "--calib_file", str(calib_file)]
    argv += ["--anti_method", "m6", "--anti_params", '{"alpha_steps": 4, "beta_steps": 4}', "--act_method", "3"]
    assert main(argv) == 0
    rows = json.loads((out / "quant_layer_report.json").read_text())
    assert any(r["status"] == "quantized" and r["sqnr_db"] for r in rows)
