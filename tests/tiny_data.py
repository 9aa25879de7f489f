"""Small files for tests: a tiny model directory, calibration texts, BoolQ-style rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tiny_models import build_tiny_llama


def save_tiny_model_dir(path: Path, tokenizer) -> Path:
    """Save a fresh tiny LLaMA-2-shaped model and ``tokenizer`` as an HF directory at ``path``."""
    build_tiny_llama("llama2").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_calib_file(path: Path) -> Path:
    """Eight short calibration texts in the reference's JSONL form, written to ``path``."""
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Question: is the sky blue? Answer: yes",
        "Ethanol fuel takes energy to produce from biomass.",
        "There are 15 trees in the grove.",
        "Ghost in the Shell is an anime film produced in 1995.",
        "A passage about history, science and music.",
        "Question: is fire cold? Answer: no",
        "Grove workers will plant trees today.",
    ]
    path.write_text("".join(json.dumps({"id": i, "inputs_pretokenized": t}) + "\n" for i, t in enumerate(texts)))
    return path


def write_tiny_boolq(path: Path) -> Path:
    """Eight BoolQ-style examples in the shared file's format (label "true"/"false"), written to ``path``."""
    rows = [
        ("is the sky blue", "The sky is blue on a clear day.", "true"),
        ("is fire cold", "Fire is hot.", "false"),
        ("do fish swim", "Fish swim in water.", "true"),
        ("is ice hot", "Ice is frozen water and cold.", "false"),
        ("is the grove full of trees", "There are 15 trees in the grove.", "true"),
        ("is ethanol free to produce", "Ethanol fuel takes energy to produce.", "false"),
        ("was the film produced in 1995", "Ghost in the Shell was produced in 1995.", "true"),
        ("is the dog quick", "The quick brown fox jumps over the lazy dog.", "false"),
    ]
    path.write_text("".join(json.dumps({"question": q, "passage": p, "label": lab}) + "\n" for q, p, lab in rows))
    return path


_WORDS = [
    "sky",
    "blue",
    "fire",
    "cold",
    "fish",
    "swim",
    "ice",
    "hot",
    "grove",
    "trees",
    "ethanol",
    "energy",
    "film",
    "produced",
    "dog",
    "quick",
    "fox",
    "lazy",
    "music",
]


def write_self_labelled_boolq(path: Path, model_dir: Path, n: int = 200, seed: int = 0) -> Path:
    """``n`` random BoolQ-style rows labelled with the answers of the float model in ``model_dir``:
    the float model scores 1.0 and its quantized versions close to it, so a planted change that
    moves answers is a real accuracy drop (a random tiny model has no BoolQ skill to lose)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.boolq import evaluate_boolq

    rng = random.Random(seed)
    rows = [
        {
            "question": "is the " + " ".join(rng.choices(_WORDS, k=3)),
            "passage": "The " + " ".join(rng.choices(_WORDS, k=8)) + ".",
            "label": "true",
        }
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    result = evaluate_boolq(model, AutoTokenizer.from_pretrained(model_dir), data_path=str(path), limit=None)
    for example in result.per_example:
        rows[example.index]["label"] = "true" if example.pred == 1 else "false"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
