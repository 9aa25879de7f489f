"""Which flag combinations name a scheme, which are refused (one line naming the parameter), and
the device rules."""

import importlib.util

import pytest
import torch

from quant.config import QuantConfig
from quant.device import resolve_device
from quant.errors import QuantInputError

W4A8_DYNAMIC = dict(w_bit=4, is_lowbit=True, open_outlier=False, is_dynamic=True)


@pytest.mark.parametrize(
    ("flags", "quant_type"),
    [
        (dict(), "W8A8"),
        (dict(a_bit=16), "W8A16"),
        (dict(is_dynamic=True), "W8A8_DYNAMIC"),
        (W4A8_DYNAMIC, "W4A8_DYNAMIC"),
        (dict(co_sparse=True), "W8A8S"),
        (dict(w_bit=4, is_lowbit=True), "W8A8S"),  # the reference's lowbit sparse path
        (dict(w_bit=4, a_bit=16, is_lowbit=True), "W4A16"),
        (dict(w_bit=4, a_bit=16, is_lowbit=True, open_outlier=False), "W4A16"),
        (dict(a_bit=16, is_lowbit=True, open_outlier=False), "W8A16"),
        (dict(pdmix=True), "W8A8_MIX"),
        (dict(w_bit=16, a_bit=16), "FLOAT"),
    ],
)
def test_flags_name_the_reference_type(flags, quant_type):
    assert QuantConfig(**flags).quant_type == quant_type


def test_co_sparse_forces_w4_a8_like_the_reference(caplog):
    cfg = QuantConfig(co_sparse=True, w_bit=8, a_bit=16)
    assert (cfg.w_bit, cfg.a_bit, cfg.quant_type) == (4, 8, "W8A8S")
    assert "co_sparse True runs W8A8S" in caplog.text


def test_mm_tensor_default_is_the_references_per_channel_output():
    assert QuantConfig().mm_tensor is False


@pytest.mark.parametrize(
    ("flags", "param", "fragment"),
    [
        (dict(w_bit=4), "w_bit", "needs a low-bit mode"),
        (dict(w_bit=4, is_dynamic=True), "open_outlier", "W4A8_DYNAMIC .* missing: per-group weights"),
        (dict(w_bit=4, is_lowbit=True, is_dynamic=True), "open_outlier", "missing: per-group weights"),
        (dict(w_bit=4, is_lowbit=True, open_outlier=False), "is_dynamic", "missing: is_dynamic True"),
        ({**W4A8_DYNAMIC, "w_sym": False}, "w_sym", "missing: symmetric weights"),
        (dict(is_lowbit=True, open_outlier=False), "open_outlier", "exists only as W4A8_DYNAMIC"),
        (dict(is_dynamic=True, a_bit=16), "is_dynamic", "needs a_bit 8"),
        (dict(co_sparse=True, is_dynamic=True), "co_sparse", "cannot be combined with is_dynamic"),
        (dict(co_sparse=True, is_lowbit=True, open_outlier=False), "co_sparse", "per-group"),
        (dict(w_sym=False), "w_sym", "needs a_bit 16"),
        (dict(mm_tensor=True, a_bit=16, is_lowbit=True, open_outlier=False), "mm_tensor", "per-channel schemes"),
        (dict(mm_tensor=True, co_sparse=True), "mm_tensor", "outlier-protected"),
        (dict(pdmix=True, is_dynamic=True), "pdmix", "W8A8_DYNAMIC"),
        (dict(pdmix=True, a_bit=16), "pdmix", "W8A16"),
        (dict(use_sigma=True), "use_sigma", "outlier-protected"),
        (dict(do_smooth=True), "do_smooth", "sparse path"),
        (dict(do_smooth=True, co_sparse=True, anti_method="m1"), "do_smooth", "anti_method none"),
        (dict(tp_size=2, a_bit=16), "tp_size", "W8A16"),
        (dict(tp_size=2, is_dynamic=True), "tp_size", "W8A8_DYNAMIC"),
        (dict(act_method=3, w_bit=4, is_lowbit=True), "act_method", "is_lowbit"),
        (dict(is_lowbit=True, w_bit=16, a_bit=16), "is_lowbit", "w_bit 4 or 8"),
    ],
)
def test_conflicting_flags_are_one_line_errors(flags, param, fragment):
    with pytest.raises(QuantInputError, match=fragment) as err:
        QuantConfig(**flags)
    assert err.value.param == param
    assert "\n" not in str(err.value)


def test_lowbit_w8_outlier_tuning_is_reported_as_not_implemented():
    cfg = QuantConfig(is_lowbit=True)  # valid for the reference: its automatic precision tuning
    with pytest.raises(QuantInputError, match="is_lowbit: .*not implemented"):
        cfg.check_supported()


@pytest.mark.parametrize(
    "flags",
    [
        dict(is_dynamic=True),
        W4A8_DYNAMIC,
        dict(co_sparse=True, use_sigma=True),
        dict(pdmix=True, tp_size=8),
        dict(mm_tensor=True),
        dict(a_bit=16, w_sym=False),
        dict(mindie_format=True, part_file_size=0.5),
    ],
)
def test_implemented_schemes_pass_check_supported(flags):
    QuantConfig(**flags).check_supported()


def test_npu_without_torch_npu_is_a_clear_error():
    if importlib.util.find_spec("torch_npu") is not None:
        pytest.skip("torch_npu is installed here")
    with pytest.raises(QuantInputError, match="device_type: npu needs the torch_npu package"):
        resolve_device("npu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_quantize_save_reload(tmp_path, tiny_tokenizer):
    from quant.export import save_quantized
    from quant.pipeline import quantize
    from quant.reload import load_quantized
    from tiny_models import build_tiny_llama

    x = tiny_tokenizer("Ghost in the Shell", return_tensors="pt").input_ids
    for flags in (dict(anti_method="m1", tp_size=2), W4A8_DYNAMIC | {"group_size": 32}, dict(pdmix=True)):
        model = build_tiny_llama("llama3").to("cuda")
        result = quantize(model, tiny_tokenizer, QuantConfig(calib_texts=["The quick brown fox."], **flags))
        out = save_quantized(model, tiny_tokenizer, tmp_path / result.quant_type, quant_type=result.quant_type)
        reloaded = load_quantized(out.directory, device_type="cuda").model
        with torch.no_grad():
            assert torch.equal(model(x.cuda()).logits, reloaded(x.cuda()).logits)
