"""``quant-llama``: the reference's ``quant_llama.py`` command line, same names and value spellings.

The parser is generated from :class:`quant.config.QuantConfig`, so the CLI and the Hydra app
can never disagree on a parameter. Bad input ends with one line naming the parameter and
exit code 2, before any model is loaded and without writing anything.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from quant.calib_data import default_calib_file
from quant.config import QuantConfig
from quant.errors import QuantInputError, invalid_value
from quant.progress import peak_memory_line, set_quiet

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
# Parameters that are not the reference's; documented in the README.
EXTENSIONS = {
    "overwrite": "replace a non-empty save_directory (the old output is removed only after the new one is complete)",
    "allow_pickle": "allow loading .bin/.pt pickle checkpoints (they can run code)",
    "quiet": "no progress bars (they show only when stderr is a terminal); a bare --quiet means True",
    "layerwise": "read, quantize and write one decoder layer at a time (default True; same output as False)",
}
_EXTENSION_DEFAULTS = {"layerwise": "True"}
# Valued extensions of the layer-wise path: (parse the text, help).
VALUE_EXTENSIONS = {
    "activation_budget_gb": "hidden states of the calibration data above this many GB are spilled to disk",
    "offload_dir": "where spilled hidden states go (default: a temporary directory beside save_directory)",
}
_LIST_FIELDS = ("disable_names", "calib_texts")
_SKIP_FIELDS = ("anti_params",)


def parse_bool(param: str, text: str) -> bool:
    """The reference's spelling: ``True`` / ``False`` (lower case accepted)."""
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    raise invalid_value(param, text, "True, False")


def parse_dict(param: str, text: str) -> dict[str, Any]:
    """A dict given as JSON or a Python literal, e.g. ``{'padding_side': 'left'}``."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, dict):
            return value
    raise invalid_value(param, text, "a dict such as {'padding_side': 'left'}")


def _parse_number(param: str, text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise invalid_value(param, text, f"{'an integer' if kind is int else 'a number'}") from None


def convert_value(field: dataclasses.Field, raw: Any) -> Any:
    """Turn the command line's text for ``field`` into the config's typed value."""
    name, ftype = field.name, str(field.type)
    if raw is None:
        return None
    if name in _LIST_FIELDS:
        items = [part.strip() for text in raw for part in str(text).split(",") if part.strip()]
        if not items:
            raise QuantInputError(name, "no value; valid: one or more non-blank texts (module names for disable_names)")
        return items
    if isinstance(raw, str) and raw == "":
        raise QuantInputError(name, "empty value; give a value or leave the parameter out")
    if ftype == "bool":
        return raw if isinstance(raw, bool) else parse_bool(name, raw)
    if ftype.startswith("int"):
        return _parse_number(name, raw, int)
    if ftype.startswith("float"):
        return _parse_number(name, raw, float)
    if ftype.startswith("dict"):
        return parse_dict(name, raw)
    return raw


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see quant-llama --help)")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"quant-llama: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="quant-llama",
        description="Quantize a LLaMA-family model with the reference recipe's parameters.",
        allow_abbrev=False,
    )
    for field in dataclasses.fields(QuantConfig):
        if field.name in _SKIP_FIELDS:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": f"default: {field.default!r}"}
        if field.name in _LIST_FIELDS:
            kwargs["nargs"] = "+"
        elif field.name == "mindie_format":
            kwargs.update(nargs="?", const=True)  # the reference also takes it as a bare flag
        parser.add_argument(f"--{field.name}", **kwargs)
    parser.add_argument("--anti_params", default=None, help="harness extension: the anti-outlier method's settings")
    for name, text in EXTENSIONS.items():
        bare = {"nargs": "?", "const": "True"} if name == "quiet" else {}
        default = _EXTENSION_DEFAULTS.get(name, "False")
        parser.add_argument(f"--{name}", default=default, help=f"harness extension: {text}", **bare)
    for name, text in VALUE_EXTENSIONS.items():
        parser.add_argument(f"--{name}", default=None, help=f"harness extension: {text}")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[QuantConfig, dict[str, Any]]:
    """Validate every parameter and build the QuantConfig (nothing is loaded yet)."""
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(QuantConfig)}
    for name, field in fields.items():
        raw = getattr(args, name)
        if raw is not None:
            values[name] = convert_value(field, raw)
    for name in ("model_path", "save_directory"):
        if not values.get(name):
            raise QuantInputError(name, "is required")
    if "calib_file" not in values and "calib_texts" not in values:
        values["calib_file"] = str(default_calib_file())  # the reference's default, recorded in quant_recipe.json
    extensions: dict[str, Any] = {name: parse_bool(name, getattr(args, name)) for name in EXTENSIONS}
    if args.activation_budget_gb is not None:
        budget = _parse_number("activation_budget_gb", args.activation_budget_gb, float)
        if budget <= 0:
            raise invalid_value("activation_budget_gb", args.activation_budget_gb, "a number of GB > 0")
        extensions["activation_budget_gb"] = budget
    if args.offload_dir is not None:
        if not args.offload_dir.strip():
            raise QuantInputError("offload_dir", "empty value; give a directory or leave the parameter out")
        extensions["offload_dir"] = args.offload_dir
    return QuantConfig.from_dict(values), extensions


def run(cfg: QuantConfig, overwrite: bool = False, allow_pickle: bool = False, **layerwise: Any) -> dict[str, Any]:
    """Check inputs, load, quantize and save; returns a summary for printing.

    ``layerwise``: the layer-wise path's extensions (``layerwise``, ``activation_budget_gb``, ``offload_dir``).
    """
    from quant.runner import quantize_to_directory

    return quantize_to_directory(cfg, overwrite=overwrite, allow_pickle=allow_pickle, **layerwise)


def check_empty_equals(argv: Sequence[str]) -> None:
    """Catch ``--name= VALUE`` (a space after '='): argparse would report only the stray VALUE."""
    for i, token in enumerate(argv):
        if token.startswith("--") and token.endswith("=") and len(token) > 3:
            name = token[2:-1]
            stray = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            hint = f"; {stray!r} was left over as a stray argument" if stray else ""
            raise QuantInputError(name, f"empty value in {token!r}{hint}; write --{name}=VALUE or --{name} VALUE")


def reject_unknown(unknown: Sequence[str]) -> None:
    """Name the first unknown ``--parameter`` (argparse would print only 'unrecognized arguments')."""
    if not unknown:
        return
    first = unknown[0]
    name = first[2:].split("=", 1)[0] if first.startswith("--") else first
    valid = ", ".join(sorted([*(f.name for f in dataclasses.fields(QuantConfig)), *EXTENSIONS, *VALUE_EXTENSIONS]))
    what = "unknown parameter" if first.startswith("--") else "stray argument (every value follows a --parameter)"
    raise QuantInputError(name, f"{what}; valid parameters: {valid}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_empty_equals(argv)
    except QuantInputError as exc:
        fail(str(exc))
    args, unknown = build_parser().parse_known_args(argv)
    try:
        reject_unknown(unknown)
        cfg, extensions = config_from_args(args)
        set_quiet(extensions.pop("quiet"))
        t0 = time.perf_counter()
        summary = run(cfg, **extensions)
    except QuantInputError as exc:
        fail(str(exc))
    except Exception as exc:  # an internal failure: one line, full traceback on request
        if os.environ.get("QUANT_DEBUG"):
            raise
        fail(f"quantization failed: {exc.__class__.__name__}: {exc} (set QUANT_DEBUG=1 for a traceback)", EXIT_FAILED)
    print(
        f"saved {summary['quant_type']} model to {summary['save_directory']} "
        f"({summary['float_layers']} linears kept float, {time.perf_counter() - t0:.1f} s)"
    )
    print(summary["float_summary"])
    print(peak_memory_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
