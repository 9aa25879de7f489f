"""Per-block NLL and KL against the float model on a fixed token set (the tune's cheap targets)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from eval.perplexity import wikitext_perplexity
from eval.token_scores import FloatReference, score_blocks, shuffled_blocks, token_blocks
from quant.errors import QuantInputError


@pytest.fixture()
def long_text(tmp_path, small_text_lf):
    path = tmp_path / "long.raw"
    path.write_text(small_text_lf.read_text() * 12)
    return path


def test_float_against_itself_scores_zero_kl_and_its_own_perplexity(tiny_model, tiny_tokenizer, long_text):
    blocks = token_blocks(tiny_tokenizer, long_text, block_size=32, n_blocks=6, add_bos=False)
    assert blocks.ids.shape == (6, 32) and blocks.config["add_bos"] is False
    reference = FloatReference(tiny_model, blocks, batch_size=4)
    scores = score_blocks(tiny_model, reference, range(6))
    assert np.allclose(scores.kl, 0.0, atol=1e-6)
    assert np.allclose(scores.nll, reference.nll)
    # Non-overlapping windows of the same tokens: the same mean NLL as wikitext_perplexity.
    ppl = wikitext_perplexity(tiny_model, tiny_tokenizer, long_text, max_tokens=6 * 32, block_size=32, add_bos=False)
    assert reference.nll.mean() == pytest.approx(ppl.nll, rel=1e-5)


def test_kl_is_the_exact_divergence_and_grows_with_the_perturbation(tiny_model, tiny_tokenizer, long_text):
    blocks = token_blocks(tiny_tokenizer, long_text, block_size=16, n_blocks=4)
    assert bool((blocks.ids[:, 0] == tiny_tokenizer.bos_token_id).all())  # the tiny tokenizer adds BOS
    reference = FloatReference(tiny_model, blocks, cache_bytes=0)  # recomputed, not cached: same numbers
    kls = []
    for scale in (0.01, 0.1):
        noisy = copy.deepcopy(tiny_model)
        with torch.no_grad():
            weight = noisy.model.layers[0].mlp.down_proj.weight
            weight.add_(scale * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
        scores = score_blocks(noisy, reference, [2, 0])
        with torch.no_grad():
            log_p = torch.log_softmax(tiny_model(blocks.ids[[2, 0]]).logits[:, :-1].double(), -1)
            log_q = torch.log_softmax(noisy(blocks.ids[[2, 0]]).logits[:, :-1].double(), -1)
        expected = (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1).numpy()
        assert scores.indices == (2, 0)
        assert np.allclose(scores.kl, expected, rtol=1e-3, atol=1e-7)
        kls.append(scores.kl.mean())
    assert 0 < kls[0] < kls[1]


def test_bad_token_set_is_refused(tiny_tokenizer, long_text, tmp_path):
    with pytest.raises(QuantInputError, match="^n_blocks: .*fewer than 1000 blocks"):
        token_blocks(tiny_tokenizer, long_text, block_size=32, n_blocks=1000)
    with pytest.raises(QuantInputError, match="^block_size: "):
        token_blocks(tiny_tokenizer, long_text, block_size=1)
    with pytest.raises(QuantInputError, match="^data_path: no such file"):
        token_blocks(tiny_tokenizer, tmp_path / "nope.raw")


def test_shuffled_blocks_are_a_seeded_permutation_of_the_file_order(tiny_tokenizer, long_text):
    blocks = token_blocks(tiny_tokenizer, long_text, block_size=32, n_blocks=12, add_bos=False)
    assert shuffled_blocks(blocks, None) is blocks
    first, again, other = (shuffled_blocks(blocks, seed) for seed in (0, 0, 1))
    rows = sorted(map(tuple, blocks.ids.tolist()))
    assert sorted(map(tuple, first.ids.tolist())) == rows  # the same blocks, each once
    assert torch.equal(first.ids, again.ids)  # the seed fixes the order
    assert not torch.equal(first.ids, blocks.ids) and not torch.equal(first.ids, other.ids)
    assert first.config == {**blocks.config, "shuffle_seed": 0}
    with pytest.raises(QuantInputError, match="^tokens.shuffle_seed: invalid value 'x'"):
        shuffled_blocks(blocks, "x")
