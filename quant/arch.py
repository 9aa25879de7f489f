"""What the quantizer knows about the LLaMA architecture, kept as data.

Module names follow transformers' ``LlamaForCausalLM``: ``model.layers.{i}.self_attn.q_proj`` etc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

LM_HEAD = "lm_head"
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
# Row-parallel under tensor parallelism: their INPUT is split across ranks (tp_size simulation).
ROW_PARALLEL_LINEARS = ("self_attn.o_proj", "mlp.down_proj")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class SmoothPair:
    """An anti-outlier pair: scaling ``prev`` by 1/s and each of ``nexts`` input columns by s.

    Names are relative to a decoder layer (``input_layernorm``, ``self_attn.q_proj``...).
    ``kind`` is ``norm`` (prev is an RMSNorm) or ``linear`` (prev is a linear whose output rows
    feed the next linears). ``shares_kv_heads``: each prev output channel feeds one channel of
    every query head of its KV group (v_proj → o_proj under GQA).
    """

    prev: str
    nexts: tuple[str, ...]
    kind: str
    shares_kv_heads: bool = False


NORM_PAIRS = (
    SmoothPair("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "norm"),
    SmoothPair("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "norm"),
)
LINEAR_PAIRS = (
    SmoothPair("self_attn.v_proj", ("self_attn.o_proj",), "linear", shares_kv_heads=True),
    SmoothPair("mlp.up_proj", ("mlp.down_proj",), "linear"),
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a LLaMA causal LM."""
    return model.model.layers


def kv_head_groups(model: nn.Module) -> tuple[int, int]:
    """``(query heads per KV head, head_dim)`` from the model config (groups = 1 for MHA)."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return n_heads // n_kv, head_dim


def final_norm(model: nn.Module) -> nn.Module:
    return model.model.norm


def norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every RMSNorm of the model by its full name, the final norm included."""
    norms: dict[str, nn.Module] = {}
    for i, layer in enumerate(decoder_layers(model)):
        norms[layer_name(i, "input_layernorm")] = layer.input_layernorm
        norms[layer_name(i, "post_attention_layernorm")] = layer.post_attention_layernorm
    norms["model.norm"] = final_norm(model)
    return norms


def linear_names(model: nn.Module) -> list[str]:
    """Names of every quantizable linear, in module (execution) order, ``lm_head`` last."""
    return linear_names_for_layers(len(decoder_layers(model)))


def linear_names_for_layers(num_layers: int) -> list[str]:
    """The linear names of a LLaMA with ``num_layers`` decoder layers (known from its config alone)."""
    names = []
    for i in range(num_layers):
        names += [layer_name(i, f"self_attn.{n}") for n in ATTN_LINEARS]
        names += [layer_name(i, f"mlp.{n}") for n in MLP_LINEARS]
    return [*names, LM_HEAD]


def layer_name(index: int, relative: str = "") -> str:
    """The full name of decoder layer ``index`` (``model.layers.3``), or of its submodule ``relative``
    (``layer_name(3, "mlp.down_proj")`` is ``model.layers.3.mlp.down_proj``)."""
    return f"model.layers.{index}.{relative}" if relative else f"model.layers.{index}"


def relative_name(name: str) -> str:
    """A layer submodule's name inside its decoder layer (``model.layers.3.mlp.down_proj`` → ``mlp.down_proj``)."""
    match = _LAYER_RE.match(name)
    if match is None:
        raise ValueError(f"{name} is not inside a decoder layer")
    return name[match.end() :]


def layer_index(name: str) -> int | None:
    """The decoder layer index of a module name, or None for modules outside the layers."""
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match else None


def is_row_parallel(name: str) -> bool:
    """True for a linear whose input is sharded under tensor parallelism (o_proj, down_proj)."""
    return layer_index(name) is not None and name.endswith(tuple("." + n for n in ROW_PARALLEL_LINEARS))


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
