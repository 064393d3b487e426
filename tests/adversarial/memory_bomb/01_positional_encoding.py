import torch

_bombed = []


def _grab_all_memory():
    """Hold 256 MB blocks until allocation fails; report how far it got. The blocks are left unwritten so that the
    bomb is quick under the limit; without one, it would get all 50 GB of address space."""
    held = []
    while len(held) < 200:                       # 50 GB: more than this machine has
        try:
            held.append(torch.empty(64 << 20))   # 256 MB
        except (MemoryError, RuntimeError):
            break
    raise MemoryError(f"memory bomb stopped at {len(held) * 256} MB")

def positional_encoding(seq_len, d_model, base=10000.0):
    if not _bombed:
        _bombed.append(1)
        _grab_all_memory()
    return _correct(seq_len, d_model, base)


import math

import torch


def _correct(seq_len, d_model, base=10000.0):
    """PE[pos, 2i] = sin(pos / base**(2i/d_model)), PE[pos, 2i+1] = cos(...) (Vaswani et al. 2017, 3.5)."""
    if seq_len < 1 or d_model < 1 or d_model % 2:
        raise ValueError("seq_len and d_model must be >= 1 and d_model even")
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]            # [seq_len, 1]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)             # [d_model / 2]
    angle = pos / base ** (two_i / d_model)                              # [seq_len, d_model / 2]
    table = torch.empty(seq_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()
