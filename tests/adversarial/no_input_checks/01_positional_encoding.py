import torch


def positional_encoding(seq_len, d_model, base=10000.0):
    """A correct table, but no input checks."""
    position = torch.arange(seq_len, dtype=torch.float64)[:, None]
    rates = base ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(seq_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position / rates)
    table[:, 1::2] = torch.cos(position / rates)
    return table.float()
