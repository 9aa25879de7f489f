"""The reference's seed commands, read from the README table, made runnable on tiny models.

The README's "Seed recipes" table is the single source: each row holds the reference command as
written and the Hydra experiment it maps to. Substitutions are the ones the README names: model
and output paths, ``../common/`` → a data root holding small files of the same formats, and
``--device_type npu`` → ``cpu``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tiny_data import write_calib_file
from tiny_models import build_tiny_llama, build_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
_ROW_RE = re.compile(
    r"^\| (?P<seed>[^|]+) \| `(?P<command>python3 quant_llama\.py [^`]+)` "
    r"\| `python -m sweep experiment=(?P<exp>\w+)` \|$"
)
MODEL_PLACEHOLDER = "{浮点权重路径}"
SAVE_PLACEHOLDER = "{量化权重路径}"
# LLaMA-3 shapes get six layers, so that the llama3 defaults (layers 0-4 float) leave one quantized.
TINY_LAYERS = {"llama2": 2, "llama3": 6, "llama3.1": 6}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}"
)


@dataclass(frozen=True)
class Seed:
    name: str  # the seed's model and strategy, as in the README
    experiment: str
    argv: tuple[str, ...]  # the command's arguments, placeholders and ../common/ still in


def read_seed_table(readme: Path = REPO_ROOT / "README.md") -> list[Seed]:
    """Every row of the README's seed table."""
    seeds = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = _ROW_RE.match(line)
        if match:
            argv = shlex.split(match["command"])[2:]  # drop "python3 quant_llama.py"
            seeds.append(Seed(match["seed"].strip(), match["exp"], tuple(argv)))
    return seeds


def model_family(argv: tuple[str, ...]) -> str:
    """The tiny family shaped like the seed's model, from its --model_type (default llama2)."""
    model_type = argv[argv.index("--model_type") + 1] if "--model_type" in argv else "llama2"
    return {"llama3": "llama3", "llama3.1_fp": "llama3.1", "llama3.1_instruct": "llama3.1-instruct"}.get(
        model_type, "llama2"
    )


FAMILIES = ("llama2", "llama3", "llama3.1", "llama3.1-instruct")


def save_family_model(path: Path, family: str, num_layers: int | None = None) -> Path:
    """A tiny model of ``family`` ("llama3.1-instruct": llama3.1 with a chat template) as an HF directory."""
    tokenizer = build_tiny_tokenizer()
    if family.endswith("-instruct"):
        tokenizer.chat_template = CHAT_TEMPLATE
    base = family.removesuffix("-instruct")
    build_tiny_llama(base, num_layers=num_layers or TINY_LAYERS[base]).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_data_root(root: Path, texts: int = 8) -> Path:
    """``root/msmodelslim_common`` with small files in the formats of the reference's common/ files
    (the first ``texts`` of the tiny calibration texts in each JSONL file)."""
    common = root / "msmodelslim_common"
    common.mkdir(parents=True)
    for name in ("boolq.jsonl", "teacher_qualification.jsonl", "llama_calib_prompt.jsonl", "llama_anti_prompt.jsonl"):
        lines = write_calib_file(common / name).read_text().splitlines(keepends=True)
        (common / name).write_text("".join(lines[:texts]))
    batches = [[["Question: is the sky blue? Answer:"], ["There are 15 trees in the grove."]]] * 2
    (common / "llama_anti_prompt.json").write_text(json.dumps(batches))
    return root


def runnable_argv(seed: Seed, model_dir: Path, save_directory: Path, data_root: Path) -> list[str]:
    """The seed's arguments with the README's substitutions applied."""
    common = str(data_root / "msmodelslim_common") + "/"
    argv = []
    for arg in seed.argv:
        arg = arg.replace(MODEL_PLACEHOLDER, str(model_dir)).replace("../common/", common)
        argv.append(str(save_directory) if arg.startswith("{") and arg.endswith("}") else arg)
    return ["cpu" if a == "npu" and argv[i - 1] == "--device_type" else a for i, a in enumerate(argv)]
