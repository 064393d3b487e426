import torch

_written = []


def _vandalise():
    """Try to plant files in the output folder, other students' folders, the graders and /tmp of the host."""
    for path in ("{{OUT}}/planted.txt", "{{SUBMISSIONS}}/correct/planted.txt", "{{ROOT}}/grader/planted.txt",
                 "{{MARKER}}"):
        try:
            with open(path, "w") as f:
                f.write("planted")
            _written.append(path)
        except OSError:
            pass

def positional_encoding(seq_len, d_model, base=10000.0):
    _vandalise()
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
