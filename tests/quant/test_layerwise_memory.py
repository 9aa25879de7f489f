"""Peak tensor memory of the layer-wise path on a deep tiny model, measured in-process.

The registry sees every storage a torch op allocates (weights read from the checkpoint are copied
by an op too, hidden states, observed inputs, quantized weights, intermediates) from its first
op output until the last tensor using it dies (storages keep one Python object, so a finalizer on
it fires then). The figure is the peak of the live bytes, exact rather than sampled.
"""

import shutil
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from quant.checkpoint import open_model
from quant.config import QuantConfig
from quant.export import ModelWriter
from quant.model_io import load_model
from quant.pipeline import quantize
from quant.streaming import LayerwiseOptions, quantize_layerwise
from tiny_models import build_tiny_llama

LAYERS = 48
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Question: is the sky blue? Answer: yes"]


class PeakTensorBytes(TorchDispatchMode):
    """Live bytes of the storages torch ops allocated inside the block, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # id(storage) -> bytes
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key not in self.live:
                self.live[key] = storage.nbytes()
                self.current += self.live[key]
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, key)
        return out


def _layer_bytes(model: nn.Module) -> int:
    return sum(p.numel() * 4 for p in model.model.layers[0].parameters())


def test_48_layers_peak_within_embeddings_head_two_layers_and_activations(tmp_path, tiny_tokenizer):
    reference = build_tiny_llama("llama3", num_layers=LAYERS)
    reference.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer.save_pretrained(tmp_path / "ckpt")
    embed = reference.model.embed_tokens.weight.numel() * 4
    head = reference.lm_head.weight.numel() * 4
    layer = _layer_bytes(reference)
    tokens = sum(len(tiny_tokenizer(t).input_ids) for t in TEXTS)
    hidden, inter = reference.config.hidden_size, reference.config.intermediate_size
    boundary = tokens * hidden * 4  # one stream's hidden states at a layer boundary
    observed = tokens * (3 * hidden + inter) * 4  # one layer's distinct linear inputs
    # Three streams (float, smoothed, calibration), their next boundary while a layer runs, one
    # layer's observed inputs, and that much again for a layer's intermediate activations.
    activations = 2 * 3 * boundary + 2 * observed
    del reference
    recipe = dict(w_bit=8, a_bit=8, anti_method="m1")
    ckpt = str(tmp_path / "ckpt")
    cfg = QuantConfig.from_dict(dict(model_path=ckpt, save_directory="x", calib_texts=TEXTS, **recipe))

    streamed = open_model(str(tmp_path / "ckpt"))
    writer = ModelWriter(tmp_path / "layerwise", quant_type=cfg.quant_type)
    with PeakTensorBytes() as layerwise:
        result = quantize_layerwise(streamed, tiny_tokenizer, cfg, writer, LayerwiseOptions())
    writer.abort()
    assert len(result.layers) == 7 * LAYERS + 1
    # What the result itself keeps per layer: the anti-outlier scales (a few per channel).
    report = result.anti_outlier
    kept = [*report.scales.values(), *report.input_scales.values(), *(t.scales for t in report.transforms.values())]
    records = sum(t.numel() * t.element_size() for t in kept)
    budget = embed + head + 2 * layer + activations + records

    loaded = load_model(ckpt)
    with PeakTensorBytes() as in_memory:  # the in-memory path (its loaded weights are not counted)
        quantize(loaded.model, loaded.tokenizer, cfg)
    print(f"budget {budget} B, layer-wise peak {layerwise.peak} B, in-memory peak {in_memory.peak} B")
    assert layerwise.peak <= budget, f"peak {layerwise.peak} B over the budget {budget} B"
    # The same measurement sees memory that grows with depth where it does: the in-memory path holds
    # every layer's quantized weights (int8, a quarter of the float bytes) and more.
    assert in_memory.peak > LAYERS * layer / 4 > budget
    shutil.rmtree(tmp_path / "ckpt")
