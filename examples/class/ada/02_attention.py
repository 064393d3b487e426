"""ada's 02_attention: a complete, correct submission."""
from __future__ import annotations

import math

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, numerically stable: same shape as x.

    Subtract the max first: softmax(x) = softmax(x - c) for any constant c, and with c = max(x) the largest exponent
    is exp(0) = 1, so exp never overflows to inf (inf / inf would be nan). Entries of -inf get weight 0.
    """
    shifted = x - x.amax(dim=dim, keepdim=True)
    exp = torch.exp(shifted)
    return exp / exp.sum(dim=dim, keepdim=True)


def causal_mask(seq_len: int) -> torch.Tensor:
    """Bool [seq_len, seq_len]: True where query i may attend key j, that is j <= i (no peeking at later tokens)."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool).tril()


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [..., Lq, d_k], k: [..., Lk, d_k], v: [..., Lk, d_v]; mask: bool broadcastable to [..., Lq, Lk],
    True = may attend. Returns (out [..., Lq, d_v], weights [..., Lq, Lk]), each row of weights summing to 1."""
    # Divide by sqrt(d_k) so the dot products don't grow with the dimension and push softmax into tiny gradients (§3.2.1).
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])        # [..., Lq, Lk]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))             # a masked key gets weight exactly 0
    weights = softmax(scores, dim=-1)                                 # [..., Lq, Lk]
    return weights @ v, weights                                       # [..., Lq, d_v]


def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                         q_proj, k_proj, v_proj, out_proj, mask: torch.Tensor | None = None) -> torch.Tensor:
    """query: [B, Lq, D]; key, value: [B, Lk, D]; *_proj: callables [..., D] -> [..., D] (e.g. nn.Linear);
    mask: bool broadcastable to [B, num_heads, Lq, Lk], True = may attend. Returns [B, Lq, D].

    §3.2.2: "MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O where head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)".
    One D x D projection holds all heads' W_i side by side; splitting its output into num_heads slices of
    d_head = D / num_heads gives each head its own query, key and value.
    """
    batch, len_q, d_model = query.shape
    len_k = key.shape[1]
    if d_model % num_heads != 0:
        raise ValueError(f"the model dimension {d_model} must be divisible by num_heads={num_heads}")
    d_head = d_model // num_heads

    def split_heads(x: torch.Tensor, length: int) -> torch.Tensor:
        # [B, L, D] -> [B, L, H, d_head] -> [B, H, L, d_head]: the transpose puts each head's whole sequence together.
        return x.reshape(batch, length, num_heads, d_head).transpose(1, 2)

    q = split_heads(q_proj(query), len_q)                            # [B, H, Lq, d_head]
    k = split_heads(k_proj(key), len_k)                              # [B, H, Lk, d_head]
    v = split_heads(v_proj(value), len_k)                            # [B, H, Lk, d_head]
    heads, _ = scaled_dot_product_attention(q, k, v, mask)           # [B, H, Lq, d_head]; scaled by sqrt(d_head)
    concat = heads.transpose(1, 2).reshape(batch, len_q, d_model)    # [B, Lq, H * d_head] = Concat(head_1..head_h)
    return out_proj(concat)                                          # [B, Lq, D]: W^O mixes the heads
