"""The project's BoolQ on the real SmolLM2 equals a plain lm-eval run of an independently built task."""

from __future__ import annotations

import textwrap

import pytest

from eval.boolq import evaluate_boolq

N_EXAMPLES = 20


def _write_task_yaml(directory, data_file, cache_dir) -> str:
    """lm-eval's boolq, re-pointed at the local JSONL; the label mapping is done in Jinja here
    (the project uses a process_docs hook instead)."""
    name = "boolq_reference_local"
    (directory / f"{name}.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: {name}
            dataset_path: json
            dataset_kwargs:
              data_files:
                validation: {data_file}
              cache_dir: {cache_dir}
            output_type: multiple_choice
            validation_split: validation
            doc_to_text: "{{{{passage}}}}\\nQuestion: {{{{question}}}}?\\nAnswer:"
            doc_to_target: "{{{{ 1 if label == 'true' else 0 }}}}"
            doc_to_choice: ["no", "yes"]
            metric_list:
              - metric: acc
            metadata:
              version: 2.0
            """
        )
    )
    return name


@pytest.mark.slow
def test_smollm2_matches_plain_lm_eval(smollm2, boolq_val, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = smollm2
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    name = _write_task_yaml(task_dir, boolq_val, tmp_path / "hf-datasets")
    plain = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
        tasks=[name],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        limit=N_EXAMPLES,
        log_samples=True,
    )
    plain_acc = plain["results"][name]["acc,none"]
    plain_rows = sorted(plain["samples"][name], key=lambda s: s["doc_id"])

    ours = evaluate_boolq(model, tokenizer, data_path=boolq_val, limit=N_EXAMPLES, batch_size=8)

    assert ours.n == len(plain_rows) == N_EXAMPLES
    assert ours.accuracy == pytest.approx(plain_acc)
    for ex, sample in zip(ours.per_example, plain_rows):
        (ll_no, _), (ll_yes, _) = sample["filtered_resps"]
        assert ex.index == sample["doc_id"]
        assert ex.gold == sample["target"]
        assert ex.pred == int(ll_yes > ll_no)
        assert ex.correct == bool(sample["acc"])
        assert ex.ll_yes == pytest.approx(ll_yes, abs=1e-4)
        assert ex.ll_no == pytest.approx(ll_no, abs=1e-4)
    assert ours.config["bos_prepended"] is False  # SmolLM2's tokenizer adds no BOS
