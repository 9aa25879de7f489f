"""Does ``sweep.tune`` ship the full grid's answer, and at what fraction of its cost?

    python -m benchmarks.tune_vs_grid [--out DIR] [--anti none,m1,m6] [--act 1,3] [--max-float 5]
                                      [--blocks 160] [--metric kl] [--margin 0.02]
                                      [--model PATH --calib PATH --text PATH]   # default: SmolLM2

Arms, in this order, each from a cold start (model load and float reference included):

- ``tune``: ``sweep.tune`` over the space (anti_method × act_method × 0 … max_float float
  linears by SQNR rank), rungs doubling from 20 blocks to ``--blocks``, its own MLflow store.
- ``grid``: every candidate of the same space quantized and scored on every block, gated on the
  full set; its answer is what the tune should ship: among the passing candidates the fewest
  float linears, then the smallest mean drop.

Writes ``benchmarks/results/tune_vs_grid.{json,md}`` (``--name`` for another stem): the two
decisions, whether they agree (same candidate, or the tune's winner within the margin of the
grid's), and the ratios tune / grid of blocks evaluated, quantizations and wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BOOLQ_CALIB, SMOLLM2, WIKITEXT, Figure, write_result
from eval.noninferiority import PASS, paired_scores
from eval.token_scores import score_blocks
from quant.arch import LM_HEAD
from sweep.compose import compose_tool_config
from sweep.tune import tune
from sweep.workbench import Setting, Workbench


def grid_arm(cfg, settings: list[Setting], max_float: int) -> dict:
    """Every candidate on every block; the gate on the full set; the grid's answer."""
    started = time.perf_counter()
    bench = Workbench.open(cfg)
    n_blocks = bench.blocks.n_blocks
    rows, quantizations = [], 0
    for setting in settings:
        base = bench.quantized(bench.recipe(setting, []))
        quantizations += 1
        ranked = sorted(
            (r for r in base.layers if r.name != LM_HEAD and r.sqnr_db is not None), key=lambda r: r.sqnr_db
        )
        for n_float in range(max_float + 1):
            if n_float == 0:
                result = base
            else:
                result = bench.quantized(bench.recipe(setting, [r.name for r in ranked[:n_float]]))
                quantizations += 1
            scores = score_blocks(result.model, bench.reference, range(n_blocks))
            values = scores.kl if cfg.target.metric == "kl" else scores.nll
            reference = np.zeros(n_blocks) if cfg.target.metric == "kl" else bench.reference.nll
            verdict = paired_scores(
                reference, values, float(cfg.target.margin), float(cfg.target.alpha), higher_is_better=False
            )
            rows.append({"candidate": f"{setting.label}-float{n_float}", "n_float": n_float, **verdict.__dict__})
    passing = [r for r in rows if r["status"] == PASS]
    winner = min(passing, key=lambda r: (r["n_float"], r["drop"])) if passing else None
    return {
        "rows": rows,
        "winner": winner,
        "quantizations": quantizations,
        "blocks": len(rows) * n_blocks,
        "wall_s": time.perf_counter() - started,
    }


def tune_arm(cfg) -> dict:
    started = time.perf_counter()
    result = tune(cfg)
    wall = time.perf_counter() - started
    winner = result.outcome.winner if result.outcome else None
    costs = result.costs
    return {
        "code": result.code,
        "winner": None if winner is None else {"candidate": winner.candidate.key, **winner.verdict.__dict__},
        "quantizations": costs.quantizations,
        "blocks": costs.blocks + costs.sensitivity_blocks,
        "evaluations_per_rung": {str(k): v for k, v in sorted(costs.evaluations.items())},
        "report": result.report,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="MLflow store and outputs (default: a temp dir)")
    parser.add_argument("--anti", default="none,m1,m6")
    parser.add_argument("--act", default="1,3")
    parser.add_argument("--max-float", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=160)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--metric", default="kl", choices=("kl", "nll"))
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--model", default=str(SMOLLM2))
    parser.add_argument("--calib", default=str(BOOLQ_CALIB))
    parser.add_argument("--text", default=str(WIKITEXT))
    parser.add_argument("--name", default="tune_vs_grid", help="result file stem under benchmarks/results/")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tune-vs-grid-"))
    rungs = [20]
    while rungs[-1] * 2 < args.blocks:
        rungs.append(rungs[-1] * 2)
    rungs = [r for r in rungs if r < args.blocks] + [args.blocks]
    anti, act = args.anti.split(","), [int(a) for a in args.act.split(",")]
    overrides = [
        f"model.path={args.model}",
        f"calib.calib_file={args.calib}",
        f"tokens.data_path={args.text}",
        f"tokens.n_blocks={args.blocks}",
        f"tokens.block_size={args.block_size}",
        f"rungs=[{','.join(map(str, rungs))}]",
        f"target.metric={args.metric}",
        f"target.margin={args.margin}",
        f"space.anti_method=[{','.join(anti)}]",
        f"space.act_method=[{','.join(map(str, act))}]",
        f"space.max_float={args.max_float}",
        f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}",
        f"tracking.artifact_root={out / 'artifacts'}",
        f"save_directory={out / 'tune-output'}",
    ]
    cfg = compose_tool_config("tune", overrides)
    settings = [Setting(a, m) for a in anti for m in act]
    tuned = tune_arm(cfg)
    grid = grid_arm(cfg, settings, args.max_float)
    same = tuned["winner"] is not None and grid["winner"] is not None
    same = same and tuned["winner"]["candidate"] == grid["winner"]["candidate"]
    within = (
        tuned["winner"] is not None
        and grid["winner"] is not None
        and tuned["winner"]["drop"] <= grid["winner"]["drop"] + args.margin
        and int(tuned["winner"]["candidate"].rsplit("float", 1)[1]) <= grid["winner"]["n_float"]
    )
    figures = [
        Figure("blocks evaluated, tune / grid", [tuned["blocks"] / grid["blocks"]], goal=0.2),
        Figure("quantizations, tune / grid", [tuned["quantizations"] / grid["quantizations"]]),
        Figure("wall time, tune / grid", [tuned["wall_s"] / grid["wall_s"]], goal=0.2),
    ]
    decision = (
        f"tune ships {tuned['winner']['candidate'] if tuned['winner'] else 'nothing'}, "
        f"grid's answer {grid['winner']['candidate'] if grid['winner'] else 'nothing'}: "
        f"{'same candidate' if same else ('within the margin' if within else 'DIFFERENT')}"
    )
    grid_md = "\n".join(
        ["| candidate | status | drop | upper bound |", "|---|---|---:|---:|"]
        + [f"| {r['candidate']} | {r['status']} | {r['drop']:.3g} | {r['upper_bound']:.3g} |" for r in grid["rows"]]
    )
    path = write_result(
        args.name,
        "sweep.tune vs the full grid",
        {**vars(args), "out": str(out), "rungs": rungs},
        figures,
        notes=[decision, f"tune wall {tuned['wall_s']:.0f} s, grid wall {grid['wall_s']:.0f} s (one pair, tune first)"],
        extra_markdown=f"### Decision\n\n{decision}\n\n### The tune's report\n\n```\n{tuned['report']}\n```\n\n"
        f"### The grid, every candidate on the full set\n\n{grid_md}\n",
        raw={"tune": tuned, "grid": grid},
    )
    print(decision)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
