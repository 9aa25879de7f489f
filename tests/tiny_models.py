"""Tiny LLaMA-family models and a tiny tokenizer, built in-process for fast tests.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on a few
hundred words of text, the models are randomly initialised from ``LlamaConfig``.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

_TRAINING_TEXT = [
    "Question: is the sky blue? Answer: yes",
    "Question: is fire cold? Answer: no",
    "The quick brown fox jumps over the lazy dog.",
    "Ethanol fuel takes energy to produce from biomass grown collected and dried.",
    "Ghost in the Shell is an anime film produced by Production I.G in 1995.",
    "There are 15 trees in the grove. Grove workers will plant trees today.",
    "A passage about history, science, sports, music and television.",
] * 4

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def build_tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (BOS added, like LLaMA's) trained on a few sentences."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    bos_id = tok.token_to_id("<s>")
    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        padding_side="left",
    )


FAMILIES = ("llama2", "llama3", "llama3.1")


def tiny_llama_config(
    family: str = "llama2", vocab_size: int = 384, num_layers: int = 2, tie_word_embeddings: bool = False
) -> LlamaConfig:
    """A LlamaConfig shaped like one family: LLaMA-1/2 (MHA), LLaMA-3 (GQA, large rope_theta),
    LLaMA-3.1 (GQA, llama3 rope scaling)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama2":
        return LlamaConfig(num_key_value_heads=4, rope_theta=10000.0, **common)
    if family == "llama3":
        return LlamaConfig(num_key_value_heads=2, rope_theta=500000.0, **common)
    if family == "llama3.1":
        return LlamaConfig(
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            **common,
        )
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def build_tiny_llama(family: str = "llama2", seed: int = 0, outliers: bool = True, **kwargs) -> LlamaForCausalLM:
    """A randomly initialised tiny LLaMA in eval mode.

    With ``outliers`` a few norm channels are scaled up, so activations have the outlier
    channels that anti-outlier methods exist for (random init has none).
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(family, **kwargs)).eval()
    if outliers:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for layer in model.model.layers:
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    norm.weight.mul_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
                    norm.weight[:3] *= 12.0
    return model
