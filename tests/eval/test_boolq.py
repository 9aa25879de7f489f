"""BoolQ through lm-eval on the tiny model, checked against an independent log-likelihood computation."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import pytest
from lm_reference import continuation_loglik

from eval.boolq import BoolQResult, evaluate_boolq, load_boolq_result, write_per_example
from eval.data import normalise_label, read_boolq_jsonl, select_indices
from eval.task import LOCAL_TASK_NAME, local_boolq_config, task_config_hash

# lm-eval's boolq task (lm_eval/tasks/super_glue/boolq/default.yaml), written out independently.
PROMPT = "{passage}\nQuestion: {question}?\nAnswer:"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _independent(model, tokenizer, path, add_bos: bool):
    out = []
    for row in _rows(path):
        prompt = PROMPT.format(passage=row["passage"], question=row["question"])
        ll_yes = continuation_loglik(model, tokenizer, prompt, " yes", add_bos)
        ll_no = continuation_loglik(model, tokenizer, prompt, " no", add_bos)
        gold = 1 if row["label"] == "true" else 0
        pred = 1 if ll_yes > ll_no else 0
        out.append({"gold": gold, "ll_yes": ll_yes, "ll_no": ll_no, "pred": pred, "correct": pred == gold})
    return out


@pytest.mark.parametrize("add_bos_token", [True, False])
def test_accuracy_matches_independent_logits(tiny_model, tiny_tokenizer, tiny_boolq_file, add_bos_token):
    result = evaluate_boolq(
        tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=None, add_bos_token=add_bos_token
    )
    expected = _independent(tiny_model, tiny_tokenizer, tiny_boolq_file, add_bos_token)

    assert result.n == len(expected) == 8
    assert [ex.index for ex in result.per_example] == list(range(8))
    for ex, ref in zip(result.per_example, expected):
        assert ex.gold == ref["gold"]
        assert ex.ll_yes == pytest.approx(ref["ll_yes"], abs=1e-4)
        assert ex.ll_no == pytest.approx(ref["ll_no"], abs=1e-4)
        assert abs(ref["ll_yes"] - ref["ll_no"]) > 1e-3, "near-tie: the comparison below would be fragile"
        assert ex.pred == ref["pred"]
        assert ex.correct == ref["correct"]
    assert result.accuracy == pytest.approx(sum(r["correct"] for r in expected) / len(expected))
    # lm-eval's closed-form standard error of a mean: sample standard deviation (n - 1) / sqrt(n).
    n, acc = len(expected), result.accuracy
    variance = sum((r["correct"] - acc) ** 2 for r in expected) / (n - 1)
    assert result.stderr == pytest.approx(math.sqrt(variance / n))
    assert result.config["bos_prepended"] is add_bos_token  # the tiny tokenizer's template adds BOS


def test_batch_size_does_not_change_results(tiny_model, tiny_tokenizer, tiny_boolq_file):
    one = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=None, batch_size=1)
    many = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=None, batch_size=8)
    assert [ex.pred for ex in one.per_example] == [ex.pred for ex in many.per_example]
    for a, b in zip(one.per_example, many.per_example):
        assert a.ll_yes == pytest.approx(b.ll_yes, abs=1e-4)
        assert a.ll_no == pytest.approx(b.ll_no, abs=1e-4)
    assert one.accuracy == many.accuracy


def test_limit_and_seed_select_the_right_rows(tiny_model, tiny_tokenizer, tiny_boolq_file):
    full = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=None)
    first = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=3)
    seeded = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=3, seed=7)

    assert [ex.index for ex in first.per_example] == [0, 1, 2]
    wanted = select_indices(8, 3, 7)
    assert [ex.index for ex in seeded.per_example] == wanted
    assert wanted != [0, 1, 2]
    # Each selected row is scored exactly as in the full run: lm-eval's doc_id is the file index.
    by_index = {ex.index: ex for ex in full.per_example}
    for subset in (first, seeded):
        for ex in subset.per_example:
            ref = by_index[ex.index]
            assert (ex.gold, ex.pred) == (ref.gold, ref.pred)
            assert ex.ll_yes == pytest.approx(ref.ll_yes, abs=1e-4)
        assert subset.accuracy == pytest.approx(sum(ex.correct for ex in subset.per_example) / 3)
    assert seeded.config["selection"] == "seeded" and first.config["selection"] == "first"


def test_select_indices_is_deterministic():
    assert select_indices(100, None, None) is None
    assert select_indices(100, None, 3) is None
    assert select_indices(100, 5, None) == [0, 1, 2, 3, 4]
    assert select_indices(5, 10, None) is None  # limit >= n: everything
    a = select_indices(3270, 20, 0)
    assert a == select_indices(3270, 20, 0)
    assert a == sorted(a) and len(set(a)) == 20 and all(0 <= i < 3270 for i in a)
    assert a != select_indices(3270, 20, 1)
    assert a != list(range(20))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            select_indices(10, bad, None)


@pytest.mark.parametrize("kind", ["bool", "int"])
def test_bool_and_int_labels_match_string_labels(tiny_model, tiny_tokenizer, tiny_boolq_file, tmp_path, kind):
    rows = _rows(tiny_boolq_file)
    for row in rows:
        truth = row["label"] == "true"
        row["label"] = truth if kind == "bool" else int(truth)
    other = tmp_path / f"boolq_{kind}.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))

    ref = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=4)
    got = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=other, limit=4)
    assert [(e.gold, e.pred) for e in got.per_example] == [(e.gold, e.pred) for e in ref.per_example]
    assert [e.gold for e in got.per_example] == [1, 0, 1, 0]
    assert got.accuracy == ref.accuracy


def test_label_normalisation_and_bad_labels(tmp_path):
    assert [normalise_label(v) for v in ("true", "FALSE", True, False, 1, 0)] == [1, 0, 1, 0, 1, 0]
    for bad in ("maybe", 2, None, 1.0):
        with pytest.raises(ValueError):
            normalise_label(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "passage": "p", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_boolq_jsonl(path)


def test_config_records_data_hash_and_task(tiny_model, tiny_tokenizer, tiny_boolq_file):
    import lm_eval

    result = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=2, seed=1, batch_size=4)
    cfg = result.config
    assert cfg["data_sha256"] == hashlib.sha256(tiny_boolq_file.read_bytes()).hexdigest()
    assert cfg["data_path"] == str(tiny_boolq_file.resolve())
    assert (cfg["limit"], cfg["seed"], cfg["batch_size"], cfg["add_bos_token"]) == (2, 1, 4, True)
    assert cfg["lm_eval_version"] == lm_eval.__version__
    assert cfg["task_config_hash"] == task_config_hash(local_boolq_config(tiny_boolq_file))
    assert result.elapsed > 0
    assert result.to_metrics() == {
        "boolq_acc": result.accuracy,
        "boolq_acc_stderr": result.stderr,
        "boolq_n": 2.0,
        "boolq_eval_seconds": result.elapsed,
    }


def test_task_is_lm_evals_boolq_on_a_local_file(tiny_boolq_file, tmp_path):
    cfg = local_boolq_config(tiny_boolq_file)
    assert cfg["task"] == LOCAL_TASK_NAME
    assert cfg["output_type"] == "multiple_choice"
    jinja_prompt = PROMPT.replace("{passage}", "{{passage}}").replace("{question}", "{{question}}")
    assert cfg["doc_to_text"] == jinja_prompt
    assert cfg["doc_to_choice"] == ["no", "yes"]
    assert cfg["doc_to_target"] == "label"
    assert cfg["metric_list"] == [{"metric": "acc"}]
    assert cfg.get("target_delimiter", " ") == " " and cfg.get("num_fewshot") in (None, 0)
    assert cfg["dataset_path"] == "json"
    # The hash ignores where the file lives.
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_bytes(tiny_boolq_file.read_bytes())
    assert task_config_hash(local_boolq_config(moved)) == task_config_hash(cfg)


def test_write_per_example_json_and_csv(tiny_model, tiny_tokenizer, tiny_boolq_file, tmp_path):
    result = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=3)
    back = load_boolq_result(write_per_example(result, tmp_path / "out" / "boolq.json"))
    assert isinstance(back, BoolQResult)
    assert back.per_example == result.per_example
    assert back.accuracy == result.accuracy and back.config == result.config
    assert (math.isnan(back.stderr) and math.isnan(result.stderr)) or back.stderr == result.stderr

    with write_per_example(result, tmp_path / "boolq.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    assert [float(r["ll_yes"]) for r in rows] == [ex.ll_yes for ex in result.per_example]
    assert set(rows[0]) == {"index", "gold", "ll_yes", "ll_no", "pred", "correct"}
    with pytest.raises(ValueError):
        write_per_example(result, tmp_path / "boolq.txt")


def test_hub_path_uses_lm_evals_builtin_task(tiny_model, tiny_tokenizer, tiny_boolq_file, monkeypatch):
    """data_path=None runs lm-eval's registered ``boolq`` task; its hub download is faked here."""
    import datasets

    calls = []
    real_load_dataset = datasets.load_dataset

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        if path == "json":
            return real_load_dataset(path, name=name, **kwargs)
        rows = _rows(tiny_boolq_file)
        split = datasets.Dataset.from_list(
            [
                {"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["label"] == "true")}
                for i, r in enumerate(rows)
            ]
        )
        return datasets.DatasetDict({"train": split, "validation": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=None, limit=5, seed=2)
    local = evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=5, seed=2)

    assert calls == [("aps/super_glue", "boolq"), ("json", None)]
    assert hub.config["task"] == "boolq" and hub.config["data_sha256"] is None
    assert hub.config["dataset"] == "aps/super_glue/boolq"
    assert [(e.index, e.gold, e.pred) for e in hub.per_example] == [
        (e.index, e.gold, e.pred) for e in local.per_example
    ]
    assert hub.accuracy == local.accuracy


def test_bad_arguments_fail_fast(tiny_model, tiny_tokenizer, tiny_boolq_file, tmp_path):
    with pytest.raises(ValueError, match="limit"):
        evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_boolq(tiny_model, tiny_tokenizer, data_path=tiny_boolq_file, limit=2, batch_size=0)
    missing = tmp_path / "missing_key.jsonl"
    missing.write_text(json.dumps({"question": "q", "label": "true"}) + "\n")
    with pytest.raises(ValueError, match="passage"):
        evaluate_boolq(tiny_model, tiny_tokenizer, data_path=missing, limit=None)
