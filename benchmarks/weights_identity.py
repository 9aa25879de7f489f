"""The sha256 of every saved weight file, to prove a refactor leaves the outputs byte-identical.

    python -m benchmarks.weights_identity            # record benchmarks/results/weights_identity.json
    python -m benchmarks.weights_identity --check    # recompute and compare with the recorded file

Entries (each: the sha256 of every ``*.safetensors`` file and of the description JSON):

- ``cli/<experiment>``: every seed command of the README table through ``quant-llama``, on the
  tiny model of its family (as ``tests/quant/test_seeds.py`` runs them);
- ``sweep/<experiment>``: the same seeds as Hydra experiments, one ``python -m sweep -m`` multirun
  per family, so the sweep's shared work (float model, statistics, smoothing) is exercised;
- ``cli/smollm2_main`` and ``sweep/smollm2_main``: the main job's composed config on SmolLM2-135M
  with the first ``--calib-texts`` calibration texts (``--no-smollm2`` leaves them out).

Not a test and not part of ``python -m benchmarks``: a before/after check run by hand. The digests
depend on the CPU's float kernels: SmolLM2's on every other machine, and the tiny models' too for
some (on an AMD EPYC, 2026-12-08, 20 of the 30 tiny entries differ from the Intel record, and
ac0a5ae's own code gives the same 30 digests as main there). On another machine, run the recorded
commit's code there first and compare with that (the file's ``note``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BOOLQ_CALIB, RESULTS, SMOLLM2

TESTS = Path(__file__).resolve().parents[1] / "tests"
OUT = RESULTS / "weights_identity.json"


def _tests_helpers() -> None:
    """The tiny models and the seed table live with the tests; import them from there."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def output_digests(directory: Path) -> dict[str, str]:
    """sha256 of each saved weight file and of the description, by file name."""
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("quant_model_description*.json"))
    if not files:
        raise RuntimeError(f"no weight files in {directory}")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli_seeds(root: Path) -> dict[str, dict[str, str]]:
    """Every seed command through ``quant-llama`` on its family's tiny model."""
    _tests_helpers()
    from seed_helpers import model_family, read_seed_table, runnable_argv, save_family_model, write_data_root

    from quant.cli import main

    data_root = write_data_root(root / "data", texts=2)
    seeds = read_seed_table()
    models = {f: save_family_model(root / "models" / f, f) for f in sorted({model_family(s.argv) for s in seeds})}
    found = {}
    saved_env = os.environ.get("QUANT_DATA_DIR")
    os.environ["QUANT_DATA_DIR"] = str(data_root)  # the default calib_file of the Instruct seeds
    try:
        for seed in seeds:
            out = root / "cli" / seed.experiment
            code = main(runnable_argv(seed, models[model_family(seed.argv)], out, data_root))
            if code != 0:
                raise RuntimeError(f"quant-llama failed on seed {seed.experiment} (exit {code})")
            found[f"cli/{seed.experiment}"] = output_digests(out)
    finally:
        if saved_env is None:
            os.environ.pop("QUANT_DATA_DIR")
        else:
            os.environ["QUANT_DATA_DIR"] = saved_env
    return found


def _sweep(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m sweep {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def _sweep_env(data_root: Path) -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "QUANT_DATA_DIR": str(data_root), "HF_HUB_OFFLINE": "1", "PYTHONPATH": repo}


def _sweep_outputs(root: Path, boolq: Path) -> list[str]:
    """Overrides that keep a sweep's outputs under ``root`` (tiny BoolQ subset, own MLflow store)."""
    return [
        f"eval.boolq.data_path={boolq}",
        "eval.boolq.limit=4",
        "resume=false",  # two seeds are the same command: both must run
        f"tracking.tracking_uri=sqlite:///{root}/mlflow.db",
        f"tracking.artifact_root={root}/artifacts",
        f"cache.dir={root}/cache",
        f"hydra.run.dir={root}/run",
        f"hydra.sweep.dir={root}/multirun",
        f"save_directory={root}/out/" + "${hydra:runtime.choices.experiment}",
    ]


def sweep_seeds(root: Path) -> dict[str, dict[str, str]]:
    """The seeds as Hydra experiments: one multirun per model family."""
    _tests_helpers()
    from seed_helpers import model_family, read_seed_table, save_family_model, write_data_root

    from tiny_data import write_tiny_boolq

    data_root = write_data_root(root / "data", texts=2)
    boolq = write_tiny_boolq(root / "boolq.jsonl")
    by_family: dict[str, list[str]] = {}
    for seed in read_seed_table():
        by_family.setdefault(model_family(seed.argv), []).append(seed.experiment)
    found = {}
    for family, experiments in sorted(by_family.items()):
        model = save_family_model(root / "models" / family, family)
        out = root / "sweep" / family
        out.mkdir(parents=True)
        args = ["-m", f"experiment={','.join(experiments)}", f"model.path={model}", *_sweep_outputs(out, boolq)]
        _sweep(args, out, _sweep_env(data_root))
        found |= {f"sweep/{e}": output_digests(out / "out" / e) for e in experiments}
    return found


def _calib_subset(path: Path, texts: int) -> Path:
    lines = BOOLQ_CALIB.read_text(encoding="utf-8").splitlines(keepends=True)[:texts]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def smollm2_main(root: Path, texts: int) -> dict[str, dict[str, str]]:
    """The main job's composed config on SmolLM2 with a calibration subset: through the CLI's
    runner and through ``python -m sweep``."""
    import sweep.app  # noqa: F401  (registers the conf/ resolvers)
    from quant.runner import quantize_to_directory
    from sweep.compose import compose_tool_config
    from sweep.hydra_config import quant_config_from_hydra

    _tests_helpers()
    from tiny_data import write_tiny_boolq

    root.mkdir(parents=True)
    calib = _calib_subset(root / "calib.jsonl", texts)
    cli_out = root / "cli"
    quantize_to_directory(
        quant_config_from_hydra(
            compose_tool_config(
                "config", [f"model.path={SMOLLM2}", f"calib.calib_file={calib}", f"save_directory={cli_out}"]
            )
        )
    )
    out = root / "sweep"
    out.mkdir(parents=True)
    args = [f"model.path={SMOLLM2}", f"calib.calib_file={calib}"]
    args += _sweep_outputs(out, write_tiny_boolq(root / "boolq.jsonl"))
    args[-1] = f"save_directory={out}/out"
    _sweep(args, out, {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return {"cli/smollm2_main": output_digests(cli_out), "sweep/smollm2_main": output_digests(out / "out")}


def compare(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per entry: ``same`` or what differs."""
    lines = []
    for name in sorted(recorded.keys() | now.keys()):
        before, after = recorded.get(name), now.get(name)
        lines.append(f"{name}: {'same' if before == after else f'DIFFERENT (before {before}, after {after})'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help=f"compare with {OUT.name} instead of writing it")
    parser.add_argument("--no-smollm2", action="store_true", help="tiny models only")
    parser.add_argument("--calib-texts", type=int, default=8, help="SmolLM2 calibration texts (default 8)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="weights-identity-") as tmp:
        root = Path(tmp)
        digests = cli_seeds(root / "cli") | sweep_seeds(root / "sweep")
        if not args.no_smollm2:
            if not SMOLLM2.is_file():
                parser.exit(2, f"weights_identity: error: SmolLM2 not found at {SMOLLM2}; pass --no-smollm2\n")
            digests |= smollm2_main(root / "smollm2", args.calib_texts)
    result = {"calib_texts_smollm2": None if args.no_smollm2 else args.calib_texts, "outputs": digests}
    if not args.check:
        OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {OUT} ({len(digests)} outputs)")
        return 0
    recorded = json.loads(OUT.read_text(encoding="utf-8"))["outputs"]
    if args.no_smollm2:
        recorded = {k: v for k, v in recorded.items() if "smollm2" not in k}
    lines = compare(recorded, digests)
    print("\n".join(lines))
    return 0 if all(line.endswith(": same") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
