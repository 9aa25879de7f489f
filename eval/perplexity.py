"""WikiText-2 perplexity with the standard Hugging Face strided sliding-window method."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.data import sha256_file


@dataclass
class PerplexityResult:
    """``ppl = exp(nll)``; ``nll`` is the mean negative log-likelihood (nats/token) over ``n_tokens``.

    ``window_nll``: each window's mean NLL over the tokens it scores, in window order: the units
    on which two models' perplexities are paired (``sweep.targets``)."""

    ppl: float
    n_tokens: int
    nll: float
    config: dict[str, Any] = field(default_factory=dict)
    elapsed: float = field(default=0.0, compare=False)
    window_nll: list[float] = field(default_factory=list)

    def to_metrics(self, prefix: str = "wikitext2_") -> dict[str, float]:
        """Flat metrics for experiment tracking."""
        return {
            f"{prefix}ppl": self.ppl,
            f"{prefix}nll": self.nll,
            f"{prefix}n_tokens": float(self.n_tokens),
            f"{prefix}eval_seconds": self.elapsed,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerplexityResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            ppl=float(data["ppl"]),
            n_tokens=int(data["n_tokens"]),
            nll=float(data["nll"]),
            config=dict(data.get("config", {})),
            elapsed=float(data.get("elapsed", 0.0)),
            window_nll=[float(v) for v in data.get("window_nll", [])],
        )


def read_raw_text(path: str | Path) -> str:
    """Read a raw text file with CRLF / CR line endings normalised to LF."""
    text = Path(path).read_bytes().decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True if the tokenizer has a BOS token and puts it in front of text by default (LLaMA does)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def stream_token_ids(tokenizer: Any, text: str, max_tokens: int, add_bos: bool) -> list[int]:
    """Token ids of ``text`` (no special tokens) cut to ``max_tokens``, with BOS in front if asked."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
    return [tokenizer.bos_token_id, *ids] if add_bos else list(ids)


def window_spans(seq_len: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) of each window: the window is ``ids[begin:end]`` and it scores
    the tokens in ``[max(first_target, begin + 1), end)``, so each token is scored at most once."""
    spans = []
    prev_end = 0
    for begin in range(0, seq_len, stride):
        end = min(begin + block_size, seq_len)
        spans.append((begin, end, prev_end))
        prev_end = end
        if end == seq_len:
            break
    return spans


@torch.no_grad()
def wikitext_perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | Path,
    *,
    max_tokens: int = 4096,
    block_size: int = 512,
    stride: int | None = None,
    add_bos: bool | None = None,
) -> PerplexityResult:
    """Perplexity of a causal LM on the start of a raw text file (e.g. ``wiki.test.raw``).

    The whole text (line endings normalised to LF) is tokenized without special tokens and
    cut to its first ``max_tokens`` tokens. BOS: ``add_bos=None`` puts one BOS in front of the
    stream exactly when the tokenizer adds BOS by default (LLaMA yes, GPT-2-style no), as
    HF's perplexity recipe does by tokenizing the whole text once; it is context only, never
    scored. Windows of ``block_size`` tokens start every ``stride`` tokens (None: ``block_size``,
    i.e. non-overlapping blocks); each window scores only the tokens no earlier window scored,
    the rest is context (label -100 in HF's recipe). A window's first token has no context and
    is not scored, so ``n_tokens`` is the number of tokens actually scored.
    """
    if max_tokens < 2 or block_size < 2:
        raise ValueError("max_tokens and block_size must be >= 2")
    stride = block_size if stride is None else stride
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    start = time.perf_counter()
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    elif add_bos and tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")

    ids = stream_token_ids(tokenizer, read_raw_text(path), max_tokens, add_bos)
    seq_len = len(ids)
    if seq_len < 2:
        raise ValueError(f"{path}: fewer than two tokens to evaluate")
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions is not None and min(block_size, seq_len) > max_positions:
        raise ValueError(f"block_size {block_size} exceeds the model's {max_positions} positions")

    device = next(model.parameters()).device
    stream = torch.tensor(ids, dtype=torch.long, device=device)
    spans = window_spans(seq_len, block_size, stride)
    was_training = model.training
    model.eval()
    nll_sum, n_scored = 0.0, 0
    window_nll: list[float] = []
    try:
        for begin, end, first_target in tqdm(spans, desc="perplexity", leave=False, disable=len(spans) < 8):
            window = stream[begin:end]
            logits = model(window.unsqueeze(0)).logits[0, :-1].float()
            token_nll = F.cross_entropy(logits, window[1:], reduction="none")  # predicts window[1:]
            scored = token_nll[max(first_target, begin + 1) - begin - 1 :]
            window_sum = scored.double().sum().item()
            window_nll.append(window_sum / scored.numel())
            nll_sum += window_sum
            n_scored += scored.numel()
    finally:
        model.train(was_training)

    nll = nll_sum / n_scored
    config = {
        "data_path": str(Path(path).resolve()),
        "data_sha256": sha256_file(path),
        "max_tokens": max_tokens,
        "block_size": block_size,
        "stride": stride,
        "add_bos": add_bos,
        "n_windows": len(spans),
        "seq_len": seq_len,
    }
    return PerplexityResult(
        ppl=math.exp(nll),
        n_tokens=n_scored,
        nll=nll,
        config=config,
        elapsed=time.perf_counter() - start,
        window_nll=window_nll,
    )
