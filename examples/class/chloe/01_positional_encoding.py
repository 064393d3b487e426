"""chloe: correct."""
from __future__ import annotations

import torch


def positional_encoding(seq_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """Sinusoidal positional encodings, float32 [seq_len, d_model].

    PE[pos, 2i] = sin(pos / base**(2i/d_model)) and PE[pos, 2i+1] = cos(pos / base**(2i/d_model)):
    sin and cos interleave, and each (sin, cos) pair shares one frequency.
    Raises ValueError if d_model is odd or if either size is < 1.
    """
    if seq_len < 1 or d_model < 1:
        raise ValueError(f"seq_len and d_model must be >= 1, got seq_len={seq_len}, d_model={d_model}")
    if d_model % 2 != 0:
        raise ValueError(f"d_model must be even (sin and cos come in pairs), got d_model={d_model}")

    # Compute the angles in float64: in float32, pos / base**(2i/d) already drifts by ~3e-5 at pos 511.
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]            # [seq_len, 1]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)[None, :]    # [1, d_model/2]: 0, 2, 4, ...
    angles = pos / base ** (two_i / d_model)                             # [seq_len, d_model/2]

    pe = torch.empty(seq_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)    # even dimensions 2i
    pe[:, 1::2] = torch.cos(angles)    # odd dimensions 2i+1, same frequency as 2i
    return pe.to(torch.float32)
