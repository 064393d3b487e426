import torch

scale = 1 / 0


def positional_encoding(seq_len, d_model, base=10000.0):
    return torch.zeros(seq_len, d_model)
