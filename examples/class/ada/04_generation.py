"""ada's 04_generation: a complete, correct submission."""
from __future__ import annotations

import torch


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits [B, V] -> tempered and filtered logits [B, V] (-inf outside the support), in transformers' order:
    temperature, then top-k, then top-p."""
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]   # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))                          # ties at the k-th stay
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.double().softmax(dim=-1)   # float64: a long tail must not round the sum up to p
        mass_before = probs.cumsum(dim=-1) - probs    # probability of the tokens ranked above each one
        drop_sorted = mass_before >= top_p            # keeps the token that crosses p, and always the first
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
             generator=None):
    """Extend input_ids [B, L] by at most max_new_tokens tokens; returns LongTensor [B, L + n], n <= max_new_tokens.

    Each step feeds the whole sequence to `model` and uses the logits at the last position.
    temperature == 0: greedy (argmax). temperature > 0: temperature, then top-k, then top-p, then a draw with
    `generator`. A row that produces eos_token_id keeps it and is padded with eos_token_id; generation stops once
    every row has produced it. With the defaults this equals transformers' generate(do_sample=False).
    """
    ids = input_ids
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)           # [B]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(ids).logits[:, -1, :]                                          # [B, V]
            if temperature == 0:
                next_token = logits.argmax(dim=-1)                                        # [B]
            else:
                probs = _filter_logits(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]
            if eos_token_id is not None:
                next_token = next_token.masked_fill(finished, eos_token_id)   # finished rows are padded with eos
                finished = finished | (next_token == eos_token_id)
            ids = torch.cat([ids, next_token[:, None]], dim=-1)                          # [B, L + t]
            if finished.all():
                break
    return ids
