"""Per-linear sensitivity from one calibration: how far the model's next-token distribution moves
from the float model's when one linear alone is quantized (or alone kept in float).

Both variants come from one quantized model: its quantized linears are swapped one at a time into
the smoothed float model (``alone_quantized``), or the smoothed float linears one at a time into
the quantized model (``alone_float``, scored by how much KL that one float linear removes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from matplotlib.figure import Figure
from torch import nn

from eval.token_scores import FloatReference, score_blocks
from quant.arch import get_module, set_module
from quant.errors import invalid_value

MODES = ("alone_quantized", "alone_float")


@dataclass(frozen=True)
class LayerSensitivity:
    """One linear: ``score`` is what the ranking sorts by (larger = more sensitive)."""

    name: str
    score: float  # alone_quantized: its KL; alone_float: KL(all quantized) − KL(it alone float)
    kl: float  # mean KL(float ‖ variant) over the blocks, nats
    nll: float  # mean NLL of the variant, nats/token
    sqnr_db: float | None  # the quantizer's output SQNR of this linear (its layer report)

    def to_dict(self) -> dict[str, float | str | None]:
        return asdict(self)


def layer_sensitivity(
    float_model: nn.Module,
    quantized_model: nn.Module,
    names: Sequence[str],
    reference: FloatReference,
    indices: Sequence[int],
    mode: str = "alone_quantized",
    sqnr_db: Mapping[str, float | None] | None = None,
) -> list[LayerSensitivity]:
    """Sensitivity of each linear in ``names``, most sensitive first.

    ``float_model``: the float model after the recipe's anti-outlier step (what the quantized
    linears expect as inputs); ``quantized_model``: the same after quantization. Each model is
    restored before returning. ``indices``: the blocks of ``reference`` to score on."""
    if mode not in MODES:
        raise invalid_value("mode", mode, MODES)
    host, donor = (float_model, quantized_model) if mode == "alone_quantized" else (quantized_model, float_model)
    baseline_kl = float(score_blocks(host, reference, indices).kl.mean()) if mode == "alone_float" else 0.0
    rows = []
    for name in names:
        original = get_module(host, name)
        set_module(host, name, get_module(donor, name))
        try:
            scores = score_blocks(host, reference, indices)
        finally:
            set_module(host, name, original)
        kl = float(scores.kl.mean())
        score = kl if mode == "alone_quantized" else baseline_kl - kl
        rows.append(LayerSensitivity(name, score, kl, float(scores.nll.mean()), (sqnr_db or {}).get(name)))
    return sorted(rows, key=lambda r: -r.score)


def sensitivity_table(rows: Sequence[LayerSensitivity], mode: str) -> str:
    """The ranking as aligned text: rank, linear, score, KL, NLL, SQNR."""
    score_name = "KL alone quantized" if mode == "alone_quantized" else "KL removed alone float"
    header = f"{'#':>3}  {'linear':<40} {score_name:>22} {'KL':>10} {'NLL':>8} {'SQNR dB':>8}"
    lines = [header]
    for rank, r in enumerate(rows, start=1):
        sqnr = "-" if r.sqnr_db is None else f"{r.sqnr_db:.1f}"
        lines.append(f"{rank:>3}  {r.name:<40} {r.score:>22.3e} {r.kl:>10.3e} {r.nll:>8.4f} {sqnr:>8}")
    return "\n".join(lines)


def sensitivity_figure(rows: Sequence[LayerSensitivity], mode: str, module_order: Sequence[str]) -> Figure:
    """Score per linear in ``module_order`` (log scale) with the SQNR on a second axis."""
    position = {name: i for i, name in enumerate(module_order)}
    ordered = sorted(rows, key=lambda r: position.get(r.name, len(position)))
    fig = Figure(figsize=(max(6.0, 0.12 * len(ordered)), 4.0))
    ax = fig.subplots()
    xs = range(len(ordered))
    ax.bar(xs, [max(r.score, 1e-12) for r in ordered], color="tab:red")
    ax.set_yscale("log")
    ax.set_ylabel("KL alone quantized (nats)" if mode == "alone_quantized" else "KL removed alone float (nats)")
    ax.set_xticks(list(xs), [r.name.removeprefix("model.layers.") for r in ordered], rotation=90, fontsize=6)
    if any(r.sqnr_db is not None for r in ordered):
        twin = ax.twinx()
        twin.plot(xs, [r.sqnr_db for r in ordered], "k.", markersize=3)
        twin.set_ylabel("output SQNR (dB)")
    ax.set_title("Per-linear sensitivity (one calibration)")
    fig.tight_layout()
    return fig
