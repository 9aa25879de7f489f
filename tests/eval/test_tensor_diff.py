"""Tensor diff: identical sets report nothing; a changed int8 weight reports its changed fraction
and relative error; renamed, reshaped and re-typed tensors are named."""

from __future__ import annotations

import math

import pytest
import torch

from eval.tensor_diff import CHANGED, ONLY_CANDIDATE, ONLY_REFERENCE, RESHAPED, diff_tensors


def _weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randint(-127, 128, (8, 16), dtype=torch.int8, generator=generator),
        "a.scale": torch.rand(8, generator=generator) + 0.5,
        "b.bias": torch.zeros(4),
    }


def test_identical_tensors_report_no_change():
    diff = diff_tensors(_weights(), _weights())
    assert diff.identical and diff.n_tensors == 3 and diff.n_identical == 3
    assert diff.summary() == "tensors: all 3 identical (sha256)"
    assert diff.to_metrics()["tensors_changed"] == 0.0


def test_changed_integers_and_scales_are_measured():
    reference, candidate = _weights(), _weights()
    candidate["a.weight"] = reference["a.weight"].clone()
    candidate["a.weight"][0, :4] = 0  # 4 of 128 integers moved (unless already 0)
    moved = int((reference["a.weight"][0, :4] != 0).sum())
    candidate["a.scale"] = reference["a.scale"] * 1.01
    diff = diff_tensors(reference, candidate)
    by_name = {c.name: c for c in diff.changes}
    assert set(by_name) == {"a.weight", "a.scale"} and diff.n_identical == 1
    weight = by_name["a.weight"]
    assert weight.status == CHANGED and weight.changed_fraction == pytest.approx(moved / 128)
    expected = float(reference["a.weight"][0, :4].abs().max()) / float(reference["a.weight"].abs().max())
    assert weight.max_rel_error == pytest.approx(expected)
    scale = by_name["a.scale"]
    assert scale.changed_fraction == 1.0
    assert scale.max_rel_error == pytest.approx(
        0.01 * float(reference["a.scale"].max()) / float(reference["a.scale"].max()), rel=1e-4
    )
    assert diff.changes[0].name == "a.weight"  # largest relative error first
    assert "a.weight (torch.int8): max rel error" in diff.summary()


def test_missing_added_and_reshaped_tensors_are_named():
    reference, candidate = _weights(), _weights()
    del candidate["b.bias"]
    candidate["c.new"] = torch.ones(2)
    candidate["a.scale"] = reference["a.scale"].double()
    diff = diff_tensors(reference, candidate)
    statuses = {c.name: c.status for c in diff.changes}
    assert statuses == {"b.bias": ONLY_REFERENCE, "c.new": ONLY_CANDIDATE, "a.scale": RESHAPED}
    assert diff.n_tensors == 4 and diff.n_identical == 1


def test_zero_reference_with_a_change_has_infinite_relative_error():
    diff = diff_tensors({"z": torch.zeros(3)}, {"z": torch.tensor([0.0, 1.0, 0.0])})
    assert math.isinf(diff.changes[0].max_rel_error) and diff.changes[0].changed_fraction == pytest.approx(1 / 3)
