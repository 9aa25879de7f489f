"""WikiText-style perplexity on the tiny model, checked against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eval.perplexity import read_raw_text, wikitext_perplexity, window_spans


def _full_sequence_ppl(model, ids: list[int]) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    loss = F.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:]))
    return math.exp(loss.item()), len(ids) - 1


def _hf_strided_ppl(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """The recipe from the transformers perplexity guide, using the model's own loss."""
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = encodings[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        n_valid = (target_ids[:, 1:] != -100).sum().item()  # labels are shifted inside the model
        nll_sum += loss.item() * n_valid
        n_tokens += n_valid
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


def test_equals_full_sequence_cross_entropy(tiny_model, tiny_tokenizer, small_text_lf):
    result = wikitext_perplexity(tiny_model, tiny_tokenizer, small_text_lf, max_tokens=4096, block_size=256)
    # The tiny tokenizer adds BOS by default, so this is exactly HF's "tokenize the whole text" input.
    ids = tiny_tokenizer(small_text_lf.read_text())["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id and len(ids) < 256
    ppl, n = _full_sequence_ppl(tiny_model, ids)
    assert result.n_tokens == n
    assert result.ppl == pytest.approx(ppl, rel=1e-5)
    assert result.nll == pytest.approx(math.log(ppl), rel=1e-5)
    assert result.config["add_bos"] is True and result.config["n_windows"] == 1


def test_crlf_and_lf_give_the_same_result(tiny_model, tiny_tokenizer, small_text_lf, small_text_crlf):
    assert b"\r\n" in small_text_crlf.read_bytes()
    assert read_raw_text(small_text_crlf) == read_raw_text(small_text_lf) == small_text_lf.read_text()
    lf = wikitext_perplexity(tiny_model, tiny_tokenizer, small_text_lf, block_size=32, stride=16)
    crlf = wikitext_perplexity(tiny_model, tiny_tokenizer, small_text_crlf, block_size=32, stride=16)
    assert (lf.ppl, lf.n_tokens, lf.nll) == (crlf.ppl, crlf.n_tokens, crlf.nll)


@pytest.mark.parametrize(("block_size", "stride"), [(32, 8), (32, 16), (32, None), (50, 49)])
def test_matches_hf_strided_recipe(tiny_model, tiny_tokenizer, small_text_lf, block_size, stride):
    result = wikitext_perplexity(tiny_model, tiny_tokenizer, small_text_lf, block_size=block_size, stride=stride)
    ids = tiny_tokenizer(small_text_lf.read_text())["input_ids"]
    ppl, n = _hf_strided_ppl(tiny_model, ids, block_size, stride or block_size)
    assert result.n_tokens == n
    assert result.ppl == pytest.approx(ppl, rel=1e-5)
    if stride is None:  # non-overlapping blocks: each block's first token has no context
        assert n == len(ids) - math.ceil(len(ids) / block_size)
    else:  # overlapping windows score every token but the very first exactly once
        assert n == len(ids) - 1


def test_window_spans_cover_each_token_once():
    for seq_len, block, stride in [(100, 32, 8), (100, 32, 32), (33, 32, 1), (5, 32, 4), (64, 32, 32)]:
        spans = window_spans(seq_len, block, stride)
        scored = [t for b, e, first in spans for t in range(max(first, b + 1), e)]
        assert len(scored) == len(set(scored))
        assert spans[-1][1] == seq_len and all(e - b <= block for b, e, _ in spans)
        if stride < block:
            assert scored == list(range(1, seq_len))


def test_max_tokens_bos_and_determinism(tiny_model, tiny_tokenizer, wikitext_raw):
    a = wikitext_perplexity(tiny_model, tiny_tokenizer, wikitext_raw, max_tokens=300, block_size=128)
    b = wikitext_perplexity(tiny_model, tiny_tokenizer, wikitext_raw, max_tokens=300, block_size=128)
    assert a == b
    assert a.config["seq_len"] == 301  # BOS + 300 text tokens
    assert a.n_tokens == 301 - 3  # three non-overlapping windows, each first token unscored
    no_bos = wikitext_perplexity(
        tiny_model, tiny_tokenizer, wikitext_raw, max_tokens=300, block_size=128, add_bos=False
    )
    assert no_bos.config["seq_len"] == 300 and no_bos.n_tokens == 300 - 3
    assert no_bos.ppl != a.ppl
    assert math.isfinite(a.ppl) and a.ppl > 1
    assert a.to_metrics()["wikitext2_ppl"] == a.ppl


def test_rejects_bad_arguments(tiny_model, tiny_tokenizer, small_text_lf, wikitext_raw):
    with pytest.raises(ValueError, match="stride"):
        wikitext_perplexity(tiny_model, tiny_tokenizer, small_text_lf, block_size=32, stride=33)
    with pytest.raises(ValueError, match="stride"):
        wikitext_perplexity(tiny_model, tiny_tokenizer, small_text_lf, block_size=32, stride=0)
    # The tiny model has 256 positions.
    with pytest.raises(ValueError, match="positions"):
        wikitext_perplexity(tiny_model, tiny_tokenizer, wikitext_raw, max_tokens=600, block_size=512)
