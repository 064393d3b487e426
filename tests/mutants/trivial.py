"""Code that computes nothing: zeros of the right shape, the input echoed back, empty strings, the prompt returned
unchanged. Points are only for work done, so every one of these scores 0 in full grading (tests/test_exercises.py)."""
from __future__ import annotations

import torch


def _zeros_pe(seq_len, d_model, base=10000.0):
    if seq_len < 1 or d_model < 1 or d_model % 2:
        raise ValueError("input checks alone are no table")
    return torch.zeros(seq_len, d_model)


def _raise_always(*args, **kwargs):
    raise ValueError("nothing computed")


def _zeros_sdpa(q, k, v, mask=None):
    return torch.zeros(*q.shape[:-1], v.shape[-1]), torch.zeros(*q.shape[:-1], k.shape[-2])


def _check_sampling_args(fn):
    """Copies of the input checks, so that only the work itself is missing."""
    def checked(logits, value=1.0, *rest, **kwargs):
        if fn == "temperature" and value <= 0 or fn == "k" and value < 1 or fn == "p" and not 0 < value <= 1:
            raise ValueError("bad argument")
        return logits if fn != "zeros" else torch.zeros_like(logits)
    return checked


TRIVIAL: dict[str, dict[str, dict]] = {
    "positional_encoding": {
        "zeros-with-input-checks": {"positional_encoding": _zeros_pe},
        "always-raises-value-error": {"positional_encoding": _raise_always},
    },
    "attention": {
        "zeros": {"softmax": lambda x, dim=-1: torch.zeros_like(x),
                  "causal_mask": lambda n: torch.zeros(n, n, dtype=torch.bool),
                  "scaled_dot_product_attention": _zeros_sdpa,
                  "multi_head_attention": lambda q, k, v, h, qp, kp, vp, op, mask=None: torch.zeros_like(q)},
        "echo": {"softmax": lambda x, dim=-1: x, "causal_mask": lambda n: torch.ones(n, n, dtype=torch.bool),
                 "scaled_dot_product_attention": lambda q, k, v, mask=None: (v, torch.ones(*q.shape[:-1], k.shape[-2])),
                 "multi_head_attention": lambda q, k, v, h, qp, kp, vp, op, mask=None: q},
    },
    "sampling": {
        "echo-with-input-checks": {
            "apply_temperature": _check_sampling_args("temperature"), "top_k_filter": _check_sampling_args("k"),
            "top_p_filter": _check_sampling_args("p"),
            "greedy_next_token": lambda logits: torch.zeros(logits.shape[:-1], dtype=torch.long),
            "sample_next_token": lambda logits, temperature=1.0, top_k=None, top_p=None, generator=None:
                torch.zeros(logits.shape[:-1], dtype=torch.long)},
        "zeros": {fn: _check_sampling_args("zeros") for fn in ("apply_temperature", "top_k_filter", "top_p_filter")} |
                 {"greedy_next_token": lambda logits: torch.zeros(logits.shape[:-1], dtype=torch.long),
                  "sample_next_token": lambda logits, temperature=1.0, top_k=None, top_p=None, generator=None:
                      torch.zeros(logits.shape[:-1], dtype=torch.long)},
        "always-raises-value-error": {fn: _raise_always for fn in (
            "apply_temperature", "top_k_filter", "top_p_filter", "greedy_next_token", "sample_next_token")},
    },
    "generation": {
        "returns-input-ids": {"generate": lambda model, input_ids, max_new_tokens, eos_token_id=None,
                              temperature=0.0, top_k=None, top_p=None, generator=None: input_ids},
        "returns-empty-continuation": {"generate": lambda model, input_ids, max_new_tokens, eos_token_id=None,
                                       temperature=0.0, top_k=None, top_p=None, generator=None:
                                       input_ids[:, :0]},
    },
    "prompting": {
        "empty-strings": {"zero_shot_prompt": lambda dialogue: "", "few_shot_prompt": lambda examples, dialogue: "",
                          "fit_few_shot_prompt": lambda examples, dialogue, tokenizer, max_tokens,
                          reserve_new_tokens=0: ("", 0)},
        "echo-dialogue": {"zero_shot_prompt": lambda dialogue: dialogue,
                          "few_shot_prompt": lambda examples, dialogue: dialogue,
                          "fit_few_shot_prompt": lambda examples, dialogue, tokenizer, max_tokens,
                          reserve_new_tokens=0: (dialogue, 0)},
        "always-raises-value-error": {fn: _raise_always for fn in (
            "zero_shot_prompt", "few_shot_prompt", "fit_few_shot_prompt")},
    },
}
