"""Our quantizer against the reference's real outputs on a tiny LLaMA, tensor for tensor.

For every case of ``shared/fixtures/reference_tiny/out/``: ``quant-llama`` with the case's flags on
the fixture's model and calibration files, then names, dtypes, shapes, description entries and key
order, config.json, integers (equal; a ±1 on a rounding edge in at most 0.1 % of a tensor's
elements, counted in the report) and floats (rtol 1e-6, about 8 float32 ulp) are compared with the
reference's files (tolerances: tests/reference_oracle.py).

Cases listed in ``KNOWN_DIFFERENCES`` reproduce a step the reference does not document (see
docs/quantizer.md, "Fidelity to the reference"): their structure must still match exactly, every
kind of tensor must stay at least as close as measured, and a case that starts matching fully
fails too, so that the list is kept true.

Every other case must match exactly, or, on a CPU whose float kernels sum in another order than the
machine this project was checked on (2026-12-04: every case but m2 bit-exact; an AVX-512 machine on
2026-12-06: m1, m3, m5, mindie and PDMix off by float noise, the same at ac0a5ae), stay inside
``CROSS_CPU_NOISE``: structure exact, integer weights equal but for a few ±1 rounding edges, scales
within a small relative error. PDMix's envelope is wider because the reference's histogram rule
truncates its range to integers, so a one-ulp change of an activation's max can move a bin edge.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from reference_oracle import case_names, compare_case, fixture_root, run_ours, unpack_reference

# case -> {tensor kind: the least fraction of elements equal (integers) / within tolerance (floats)}.
# Floors sit a little under the measured figures (docs/quantizer.md) so that a float ulp of another
# CPU does not fail the test, while any real regression does.
KNOWN_DIFFERENCES: dict[str, dict[str, float]] = {
    # m2: which channels the reference scales comes from a search that is not published; 3 of the
    # 6 smoothing pairs select the same channels (their tensors are bit-exact).
    "w8a8_m2_act1": {
        "weight (W8A8)": 0.88,
        "weight_scale (W8A8)": 0.95,
        "weight (FLOAT)": 0.99,
        "input_scale (W8A8)": 0.20,
        "input_offset (W8A8)": 0.50,
        "bias (FLOAT)": 1.0,
        "weight_offset (W8A8)": 1.0,
    },
}


# Envelope for float noise of another CPU (see the module docstring): kind -> (least fraction of
# elements equal, largest relative error for floats or absolute difference for integers).
_NOISE: dict[str, tuple[float, float]] = {
    "weight (W8A8)": (0.9999, 1),
    "weight (W8A8_MIX)": (0.9999, 1),
    "weight_offset (W8A8)": (1.0, 0),
    "input_offset (W8A8)": (0.99, 1),
    "input_scale (W8A8)": (0.0, 2e-3),
    "deq_scale (W8A8)": (0.0, 2e-3),
    "weight_scale (W8A8)": (0.0, 1e-5),
    "weight (FLOAT)": (0.0, 1e-5),
    "kv_cache_scale (C8)": (0.0, 1e-5),
    "quant_bias (W8A8)": (0.99, 64),
}
CROSS_CPU_NOISE: dict[str, dict[str, tuple[float, float]]] = {
    "w8a8_pdmix": {
        **_NOISE,
        "input_offset (W8A8_MIX)": (0.4, 8),
        "input_scale (W8A8_MIX)": (0.2, 0.1),
        "deq_scale (W8A8_MIX)": (0.2, 0.1),
        "quant_bias (W8A8_MIX)": (0.3, 10000),
        "weight_scale (W8A8_MIX)": (0.0, 1e-5),
    },
}


def _assert_within_cross_cpu_noise(case: str, diff, report: str) -> None:
    """Structure exact and every differing kind inside its envelope (the whole kind must be listed)."""
    structural = [t for t in diff.tensors if t.problem]
    assert not structural and not diff.description and not diff.order and not diff.config, report
    envelope = CROSS_CPU_NOISE.get(case, _NOISE)
    for kind, figures in diff.by_kind().items():
        if figures["fraction_equal"] == 1.0:
            continue
        assert kind in envelope, f"{case}: {kind} differs and has no noise envelope\n{report}"
        least_equal, largest_error = envelope[kind]
        error = figures["max_abs_diff"] if figures["integer"] else figures["max_rel_err"]
        assert figures["fraction_equal"] >= least_equal, f"{case}: {kind} below {least_equal:.2%} equal\n{report}"
        assert error <= largest_error, f"{case}: {kind} error {error:g} > {largest_error:g}\n{report}"


def _cases() -> list[str]:
    root = fixture_root()
    if not (root / "out" / "manifest.json").is_file():
        return ["<fixture missing>"]
    return case_names(root)


@pytest.fixture(scope="session")
def reference_outputs(tmp_path_factory) -> Path:
    """The reference's safetensors, unpacked once per test session and checked against SHA256SUMS."""
    root = fixture_root()
    if not (root / "out" / "manifest.json").is_file():
        pytest.fail(f"reference fixture not found at {root} (set QUANT_DATA_DIR or keep ../shared beside the repo)")
    target = unpack_reference(root, tmp_path_factory.mktemp("reference_tiny"))
    for case in case_names(root):
        for line in (root / "out" / case / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
            digest, name = line.split()
            actual = hashlib.sha256((target / case / name.lstrip("*")).read_bytes()).hexdigest()
            assert actual == digest, f"{case}/{name}: unpacked file does not match SHA256SUMS"
    return target


@pytest.mark.parametrize("case", _cases())
def test_output_matches_the_reference(case, reference_outputs, tmp_path):
    root = fixture_root()
    run_ours(root, case, tmp_path / case)
    diff = compare_case(case, tmp_path / case, reference_outputs / case, root / "out" / case)
    report = diff.report()
    print(report)  # the per-tensor table, also when the case passes (pytest -s / -rA)
    floors = KNOWN_DIFFERENCES.get(case)
    if floors is None:
        if not diff.ok:
            _assert_within_cross_cpu_noise(case, diff, report)
        return
    assert not diff.ok, f"{case} now matches the reference: remove it from KNOWN_DIFFERENCES\n{report}"
    structural = [t for t in diff.tensors if t.problem]
    assert not structural and not diff.description and not diff.order and not diff.config, report
    kinds = diff.by_kind()
    for kind, floor in floors.items():
        assert kinds[kind]["fraction_equal"] >= floor, f"{kind}: closer before ({floor:.2%})\n{report}"
