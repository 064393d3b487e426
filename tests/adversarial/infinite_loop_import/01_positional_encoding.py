import torch


class Spin:
    while True:          # a class body runs at import
        pass


def positional_encoding(seq_len, d_model, base=10000.0):
    return torch.zeros(seq_len, d_model)
