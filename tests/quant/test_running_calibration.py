"""The running calibration pass (SPEC §4 act 1–3) against an independent whole-model pass.

The reference runs the whole model once per calibration batch, in file order, with every static
linear fake-quantized at once with the range of batches 0..b (this batch included). The test
builds exactly that (its own module, its own scale/offset arithmetic) on a second copy of the
model and checks that the pipeline's layer-by-layer pass gives the same parameters bit for bit,
that o_proj observes the attention output of the fake-quantized q/k/v (not the float one), and
that the per-linear SQNR comes from that very pass.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from scheme_helpers import smooth_in_place
from torch import nn

from quant.arch import get_module, linear_names, set_module
from quant.calib_data import tokenize_texts
from quant.config import QuantConfig
from quant.observers import observer_factory
from quant.pipeline import quantize
from quant.quantizers import SqnrAccumulator
from quant.running_pass import calibrate_model, sqnr_rows
from quant.schemes import quantize_linears
from tiny_models import build_tiny_llama

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the sky blue? Answer: yes",
    "There are 15 trees in the grove. Grove workers will plant trees today.",
    "Ghost in the Shell is an anime film produced in 1995.",
]


def _params(lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Static asymmetric int8 parameters, written out here (range widened to include 0)."""
    lo_t = torch.tensor(min(lo, 0.0), dtype=torch.float32)
    hi_t = torch.tensor(max(hi, 0.0), dtype=torch.float32)
    scale = (hi_t - lo_t) / 255
    return scale, torch.round(-lo_t / scale) - 128


class WholeModelFakeQuant(nn.Module):
    """One static linear of the reference's whole-model pass: observe, take the running range,
    fake-quantize the input, multiply by the dequantized weight; also the SQNR against float."""

    def __init__(self, quantized: nn.Module, float_linear: nn.Module, observer) -> None:
        super().__init__()
        self.quantized, self.float_linear, self.observer = quantized, float_linear, observer
        self.inputs: list[torch.Tensor] = []
        self.sqnr = SqnrAccumulator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        self.observer.update(x.float())
        scale, offset = _params(*self.observer.range())
        x_fq = (torch.clamp(torch.round(x / scale + offset), -128, 127) - offset) * scale
        w = (self.quantized.weight.float() - self.quantized.weight_offset) * self.quantized.weight_scale
        out = F.linear(x_fq, w)
        rows = sqnr_rows(out.shape[-1])  # the report's output channels
        self.sqnr.update(self.float_linear(x)[..., rows], out[..., rows])
        return out


def _whole_model_pass(cfg: QuantConfig, batches, names) -> dict[str, WholeModelFakeQuant]:
    model = build_tiny_llama("llama2")
    smooth_in_place(model, batches, cfg)
    floats = {n: get_module(model, n) for n in names}
    quantize_linears(model, names, cfg)
    make = observer_factory(cfg.act_method, {n: 0.0 for n in names})  # act 3 here: histogram for all
    stand_ins = {n: WholeModelFakeQuant(get_module(model, n), floats[n], make(n)) for n in names}
    for n, module in stand_ins.items():
        set_module(model, n, module)
    with torch.no_grad():
        for batch in batches:
            model.model(**batch)  # the decoder; lm_head stays float
    return stand_ins


@pytest.mark.parametrize("act_method", [1, 2])
def test_layer_by_layer_pass_equals_the_whole_model_pass(tiny_tokenizer, act_method):
    cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1", act_method=act_method, disable_names=[])
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    model = build_tiny_llama("llama2")
    result = quantize(model, tiny_tokenizer, cfg)
    names = [n for n in linear_names(model) if n != "lm_head"]
    reference = _whole_model_pass(cfg, batches, names)
    by_name = {r.name: r for r in result.layers}
    for name in names:
        module = get_module(model, name)
        scale, offset = _params(*reference[name].observer.range())
        assert torch.equal(module.input_scale, scale.reshape(1)), name
        assert torch.equal(module.input_offset, offset.reshape(1)), name
        assert by_name[name].sqnr_db == pytest.approx(reference[name].sqnr.db, rel=1e-9), name


def test_o_proj_observes_attention_of_fake_quantized_qkv(tiny_tokenizer):
    """Layer 1's o_proj: its inputs in the pipeline's pass are those of the whole-model pass, where
    they are the attention output of the fake-quantized q/k/v — not the float attention output."""
    cfg = QuantConfig(calib_texts=TEXTS, anti_method="m1", disable_names=[])
    batches = tokenize_texts(tiny_tokenizer, TEXTS)
    names = [n for n in linear_names(build_tiny_llama("llama2")) if n != "lm_head"]
    reference = _whole_model_pass(cfg, batches, names)["model.layers.1.self_attn.o_proj"].inputs

    seen: list[torch.Tensor] = []

    @contextlib.contextmanager
    def watch(index, layer):
        handle = None
        if index == 1:
            handle = layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
        yield
        if handle is not None:
            handle.remove()

    model = build_tiny_llama("llama2")
    smooth_in_place(model, batches, cfg)
    calibrate_model(model, batches, names, cfg, observer_factory(1), watchers=[watch])
    assert len(seen) == len(batches)
    for ours, theirs in zip(seen, reference):
        assert torch.equal(ours, theirs)

    float_model = build_tiny_llama("llama2")
    smooth_in_place(float_model, batches, cfg)
    float_inputs: list[torch.Tensor] = []
    handle = float_model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
        lambda _m, a: float_inputs.append(a[0])
    )
    with torch.no_grad():
        for batch in batches:
            float_model.model(**batch)
    handle.remove()
    assert not any(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(seen, float_inputs))
