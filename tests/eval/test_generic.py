"""Any lm-eval task by name, from local task files, through the same code path as BoolQ."""

from __future__ import annotations

import json
import textwrap

import pytest
from lm_reference import continuation_loglik

from eval.boolq import evaluate_boolq
from eval.generic import TaskResult, evaluate_task

CAPITALS = [
    ("France", ["Paris", "Rome", "Berlin"], 0),
    ("Italy", ["Madrid", "Rome", "Paris"], 1),
    ("Germany", ["Berlin", "Lisbon", "Oslo"], 0),
    ("Spain", ["Oslo", "Paris", "Madrid"], 2),
    ("Norway", ["Oslo", "Rome", "Berlin"], 0),
]


@pytest.fixture()
def task_dir(tmp_path, tiny_boolq_file):
    """Local lm-eval task YAMLs: a 3-way capitals task, BoolQ written as a plain YAML, a group of both."""
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"country": c, "choices": ch, "gold": g}) + "\n" for c, ch, g in CAPITALS))
    folder = tmp_path / "tasks"
    folder.mkdir()
    common = """\
        dataset_path: json
        output_type: multiple_choice
        validation_split: validation
        metric_list:
          - metric: acc
        metadata:
          version: 1.0
        """
    (folder / "capitals.yaml").write_text(
        textwrap.dedent(common)
        + textwrap.dedent(
            f"""\
            task: tiny_capitals
            dataset_kwargs:
              data_files:
                validation: {data}
              cache_dir: {tmp_path / "hf-datasets"}
            doc_to_text: "The capital of {{{{country}}}} is"
            doc_to_choice: "{{{{choices}}}}"
            doc_to_target: gold
            """
        )
    )
    (folder / "boolq_yaml.yaml").write_text(
        textwrap.dedent(common)
        + textwrap.dedent(
            f"""\
            task: tiny_boolq_yaml
            dataset_kwargs:
              data_files:
                validation: {tiny_boolq_file}
              cache_dir: {tmp_path / "hf-datasets"}
            doc_to_text: "{{{{passage}}}}\\nQuestion: {{{{question}}}}?\\nAnswer:"
            doc_to_choice: ["no", "yes"]
            doc_to_target: "{{{{ 1 if label == 'true' else 0 }}}}"
            """
        )
    )
    (folder / "group.yaml").write_text("group: tiny_group\ntask:\n  - tiny_capitals\n  - tiny_boolq_yaml\n")
    return folder


def test_local_task_matches_independent_logits(tiny_model, tiny_tokenizer, task_dir):
    result = evaluate_task(tiny_model, tiny_tokenizer, "tiny_capitals", include_path=task_dir, include_defaults=False)
    rows = result.per_example["tiny_capitals"]
    assert [r.index for r in rows] == list(range(len(CAPITALS)))
    correct = []
    for row, (country, choices, gold) in zip(rows, CAPITALS):
        expected = [
            continuation_loglik(tiny_model, tiny_tokenizer, f"The capital of {country} is", f" {c}", True)
            for c in choices
        ]
        assert [ll for ll, _ in row.responses] == pytest.approx(expected, abs=1e-4)
        assert row.target == gold
        top, second = sorted(expected, reverse=True)[:2]
        assert top - second > 1e-3, "near-tie: the comparison below would be fragile"
        pred = expected.index(top)
        correct.append(pred == gold)
        assert row.metrics == {"acc": float(pred == gold)}
    assert result.metrics["tiny_capitals"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    assert result.config["n_total"] == {"tiny_capitals": 5} and result.config["add_bos_token"] is True
    assert len(result.config["task_config_hash"]["tiny_capitals"]) == 64


def test_same_code_path_as_boolq(tiny_model, tiny_tokenizer, task_dir, tiny_boolq_file):
    """BoolQ written as a plain YAML task and run by name gives evaluate_boolq's numbers, subset included."""
    generic = evaluate_task(
        tiny_model, tiny_tokenizer, "tiny_boolq_yaml", include_path=task_dir, include_defaults=False, limit=5, seed=3
    )
    boolq = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=5, seed=3)
    rows = generic.per_example["tiny_boolq_yaml"]
    assert [r.index for r in rows] == [ex.index for ex in boolq.per_example]
    for row, ex in zip(rows, boolq.per_example):
        (ll_no, _), (ll_yes, _) = row.responses
        assert (ll_no, ll_yes) == (ex.ll_no, ex.ll_yes)
        assert row.target == ex.gold
    assert generic.metrics["tiny_boolq_yaml"]["acc,none"] == boolq.accuracy


def test_group_runs_every_member_and_round_trips(tiny_model, tiny_tokenizer, task_dir):
    result = evaluate_task(
        tiny_model, tiny_tokenizer, "tiny_group", include_path=task_dir, include_defaults=False, limit=3
    )
    assert set(result.per_example) == {"tiny_capitals", "tiny_boolq_yaml"}
    assert all(len(rows) == 3 for rows in result.per_example.values())
    assert {"tiny_capitals", "tiny_boolq_yaml"} <= set(result.metrics)
    assert result.config["groups"] == ["tiny_group"]
    flat = result.to_metrics("lm_")
    assert flat["lm_tiny_capitals.acc.none"] == result.metrics["tiny_capitals"]["acc,none"]
    assert all("," not in name for name in flat)
    back = TaskResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.per_example == result.per_example and back.config == result.config


def test_unknown_task_is_a_clear_error(tiny_model, tiny_tokenizer, task_dir):
    with pytest.raises(ValueError, match="no task, group or tag named 'nope'"):
        evaluate_task(tiny_model, tiny_tokenizer, "nope", include_path=task_dir, include_defaults=False)
