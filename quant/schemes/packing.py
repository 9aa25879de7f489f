"""int4 packing of W4A8_DYNAMIC weights (SPEC §4): two values per int8 byte along the output rows.

Byte ``[i, j]`` holds row ``2i`` of column ``j`` in its low nibble and row ``2i + 1`` in its
high nibble, each as a two's-complement 4-bit value; an (n, k) tensor packs to (n / 2, k).
"""

from __future__ import annotations

import torch

INT4_MIN, INT4_MAX = -8, 7


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Pack int4 values (int tensor (n, k), n even, each in [-8, 7]) into int8 (n / 2, k)."""
    if values.dim() != 2 or values.shape[0] % 2:
        raise ValueError(f"pack_int4 needs a 2-D tensor with an even number of rows, got shape {tuple(values.shape)}")
    if values.numel() and (values.min() < INT4_MIN or values.max() > INT4_MAX):
        raise ValueError("pack_int4: values outside the int4 range [-8, 7]")
    v = values.to(torch.int16)
    low = v[0::2] & 0x0F  # rows 0, 2, 4, ...: (n / 2, k)
    high = (v[1::2] & 0x0F) << 4  # rows 1, 3, 5, ...
    byte = low | high  # 0..255
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 (n / 2, k) to int8 values (n, k) in [-8, 7]."""
    byte = packed.to(torch.int16) & 0xFF
    low = byte & 0x0F
    high = (byte >> 4) & 0x0F
    low = torch.where(low > 7, low - 16, low)  # sign-extend the nibbles
    high = torch.where(high > 7, high - 16, high)
    rows = torch.stack((low, high), dim=1)  # (n / 2, 2, k): row 2i then row 2i + 1
    return rows.reshape(-1, packed.shape[1]).to(torch.int8)
