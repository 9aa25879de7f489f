"""Per-block scores of a model on a fixed token set, paired with the float model: next-token
negative log-likelihood and KL(float ‖ model) of the next-token distributions.

The token set is the start of a raw text file (WikiText-2's ``wiki.test.raw``) cut into
``n_blocks`` non-overlapping blocks, optionally in a seeded random order
(:func:`shuffled_blocks`); each block is one unit of the non-inferiority gate (tokens of one
block are correlated, blocks much less so). The float model's log-probabilities are
computed once (:class:`FloatReference`) and every candidate is scored against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.data import sha256_file
from eval.perplexity import read_raw_text, stream_token_ids, tokenizer_adds_bos
from quant.errors import QuantInputError, invalid_value

# Float log-probabilities are kept (float32) while they fit in this; above it they are recomputed.
DEFAULT_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class TokenBlocks:
    """``ids``: (n_blocks, block_size) token ids; position 0 of each block is context only."""

    ids: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return int(self.ids.shape[0])


def token_blocks(
    tokenizer: Any, path: str | Path, *, block_size: int = 128, n_blocks: int = 64, add_bos: bool | None = None
) -> TokenBlocks:
    """The first ``n_blocks`` × ``block_size`` tokens of a raw text file as blocks. With BOS (by
    default when the tokenizer adds one, as :func:`eval.perplexity.wikitext_perplexity`) every
    block starts with BOS followed by ``block_size − 1`` text tokens."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise invalid_value("block_size", block_size, "an integer >= 2")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise invalid_value("n_blocks", n_blocks, "an integer >= 1")
    if not Path(path).is_file():
        raise QuantInputError("data_path", f"no such file: {path}")
    add_bos = tokenizer_adds_bos(tokenizer) if add_bos is None else add_bos
    text_tokens = block_size - 1 if add_bos else block_size
    ids = stream_token_ids(tokenizer, read_raw_text(path), text_tokens * n_blocks, add_bos=False)
    if len(ids) < text_tokens * n_blocks:
        raise QuantInputError(
            "n_blocks", f"{path} has {len(ids)} tokens, fewer than {n_blocks} blocks of {text_tokens} need"
        )
    blocks = torch.tensor(ids, dtype=torch.long).view(n_blocks, text_tokens)  # (n_blocks, text_tokens)
    if add_bos:
        bos = torch.full((n_blocks, 1), tokenizer.bos_token_id, dtype=torch.long)
        blocks = torch.cat([bos, blocks], dim=1)  # (n_blocks, block_size)
    config = {
        "data_path": str(Path(path).resolve()),
        "data_sha256": sha256_file(path),
        "block_size": block_size,
        "n_blocks": n_blocks,
        "add_bos": add_bos,
    }
    return TokenBlocks(blocks, config)


def check_shuffle_seed(seed: object) -> int | None:
    """``tokens.shuffle_seed`` as given, or a one-line error: an integer, or None for the file's order."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid_value("tokens.shuffle_seed", seed, "an integer, or null for the file's order")
    return seed


def shuffled_blocks(blocks: TokenBlocks, seed: int | None) -> TokenBlocks:
    """``blocks`` in a seeded random order (``None``: as they are).

    Nested prefixes of the result (the tune's rungs, the sensitivity's first blocks) are then
    random subsets of the text, as a gate on a prefix assumes: the file's own order puts
    neighbouring, similar passages together, so its first blocks need not resemble the rest.
    """
    if check_shuffle_seed(seed) is None:
        return blocks
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(blocks.n_blocks, generator=generator)
    return TokenBlocks(blocks.ids[order], {**blocks.config, "shuffle_seed": seed})


@dataclass(frozen=True)
class BlockScores:
    """Per block: mean next-token NLL (nats) and mean KL(float ‖ model) (nats) over its scored positions."""

    indices: tuple[int, ...]
    nll: np.ndarray
    kl: np.ndarray


class FloatReference:
    """The float model's next-token log-probabilities on a token set, for scoring candidates."""

    def __init__(
        self, model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 8, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.model = model
        self.blocks = blocks
        self.batch_size = batch_size
        vocab = int(model.get_output_embeddings().weight.shape[0])
        size = blocks.ids.numel() * vocab * 4
        self._cached: dict[int, torch.Tensor] | None = {} if size <= cache_bytes else None
        self.nll = np.empty(blocks.n_blocks)
        for start in range(0, blocks.n_blocks, batch_size):
            indices = list(range(start, min(start + batch_size, blocks.n_blocks)))
            log_probs = _log_probs(model, blocks.ids[indices])
            self.nll[indices] = _mean_nll(log_probs, blocks.ids[indices])
            if self._cached is not None:
                self._cached.update({i: lp for i, lp in zip(indices, log_probs)})

    def log_probs(self, indices: Sequence[int]) -> torch.Tensor:
        """(len(indices), block_size − 1, vocab) float log-probabilities of the blocks."""
        if self._cached is not None:
            return torch.stack([self._cached[i] for i in indices])
        return _log_probs(self.model, self.blocks.ids[list(indices)])


def score_blocks(model: torch.nn.Module, reference: FloatReference, indices: Sequence[int]) -> BlockScores:
    """Mean NLL and mean KL(float ‖ model) of each block in ``indices`` (in that order)."""
    indices = list(indices)
    nll = np.empty(len(indices))
    kl = np.empty(len(indices))
    step = reference.batch_size
    for start in range(0, len(indices), step):
        chunk = indices[start : start + step]
        ids = reference.blocks.ids[chunk]
        log_q = _log_probs(model, ids)  # (batch, positions, vocab)
        log_p = reference.log_probs(chunk).to(log_q.device)
        per_position = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)  # (batch, positions)
        kl[start : start + len(chunk)] = per_position.mean(-1).double().cpu().numpy()
        nll[start : start + len(chunk)] = _mean_nll(log_q, ids)
    return BlockScores(tuple(indices), nll, kl)


@torch.no_grad()
def _log_probs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(batch, block_size − 1, vocab) float32 next-token log-probabilities for positions 0..T−2."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(ids.to(device)).logits[:, :-1].float()
    finally:
        model.train(was_training)
    return F.log_softmax(logits, dim=-1)


def _mean_nll(log_probs: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    targets = ids[:, 1:].to(log_probs.device).unsqueeze(-1)  # (batch, positions, 1): the next tokens
    token_nll = -log_probs.gather(-1, targets).squeeze(-1)  # (batch, positions)
    return token_nll.mean(-1).double().cpu().numpy()
