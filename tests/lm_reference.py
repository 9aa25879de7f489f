"""Independent (non-lm-eval) log-likelihood computations that the eval tests compare against."""

from __future__ import annotations

import torch


def continuation_loglik(model, tokenizer, context: str, continuation: str, add_bos: bool) -> float:
    """log P(continuation | context) the way lm-eval splits it: encode context+continuation and
    context, the continuation tokens are the tail of the whole encoding."""
    whole = tokenizer(context + continuation, add_special_tokens=add_bos)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=add_bos)["input_ids"]
    assert whole[: len(ctx)] == ctx
    cont = whole[len(ctx) :]
    assert cont
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[len(ctx) - 1 + i, tok].item() for i, tok in enumerate(cont))
