def generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
             generator=None):
    return input_ids
