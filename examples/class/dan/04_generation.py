"""dan: a generation loop that never ends."""
import torch


def generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
             generator=None):
    while True:
        pass
