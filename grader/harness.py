"""Grader code that must run beside the learner's code (in the sandboxed child during official grading).

Each function takes `sub` (the learner's functions, by attribute) first and returns plain values, which then cross
back to the trusted grader by value. Used for checks that need the learner's code and a real model together, or that
need to observe the learner's process (e.g. whether an input was modified in place).
"""
from __future__ import annotations


# --- attention / sampling ---
# Generic checks (any exercise may use them) and the MiniLM patch for exercise 02 (attention).
import contextlib  # noqa: E402 - kept in this section so that sections stay independent

def exception_raised(sub, fn: str, *args, **kwargs) -> list[str] | None:
    """Call the learner's `fn`; None if it returns, else the names of the raised exception's classes (its MRO),
    so that a grader can check e.g. `"ValueError" in raised` (a subclass of ValueError counts). Built-in classes
    appear by bare name, others with their module ("submission.ValueError"), so a look-alike class doesn't count."""
    try:
        getattr(sub, fn)(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any exception is an answer here
        return [cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
                for cls in type(exc).__mro__]
    return None


def modified_inputs(sub, fn: str, *args, **kwargs) -> list[str]:
    """Call the learner's `fn` and name every tensor argument it changed in place ("argument 1", "temperature", ...).

    Arguments cross into the learner's process by value, so an in-place edit is only visible here, beside the call."""
    import torch

    def tensors(values: dict) -> dict:
        return {name: v for name, v in values.items() if isinstance(v, torch.Tensor)}

    named = {f"argument {i + 1}": a for i, a in enumerate(args)} | dict(kwargs)
    before = {name: t.clone() for name, t in tensors(named).items()}
    getattr(sub, fn)(*args, **kwargs)
    return [name for name, t in tensors(named).items()
            if t.shape != before[name].shape or not torch.equal(t.isnan(), before[name].isnan())
            or not torch.equal(t.nan_to_num(), before[name].nan_to_num())]


def mean_pooled_embeddings(model, tokenizer, sentences: list[str]):
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: the mean of the last hidden
    states over real (non-padding) tokens, then L2-normalised. Returns float32 [len(sentences), hidden]."""
    import torch

    batch = tokenizer(sentences, padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                       # [B, L, D]
    keep = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)        # [B, L, 1]: 1 for real tokens
    pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1)                # [B, D]
    return torch.nn.functional.normalize(pooled, dim=-1).cpu()


@contextlib.contextmanager
def bert_self_attention_replaced(model, multi_head_attention, attention_mask):
    """Inside the block, the self-attention of every layer of a transformers BertModel runs through
    `multi_head_attention(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask)`, with the layer's
    own nn.Linear projections and a padding mask built from `attention_mask` [B, L] (1 = real token). The model is
    always restored on exit, even when the learner's code raises.

    Only the attention itself is replaced: BERT's residual connection and LayerNorm after it stay the model's own."""
    mask = attention_mask.bool()[:, None, None, :]      # [B, 1, 1, L]: every query may attend every real key

    def replacement(attention):
        heads = attention.self.num_attention_heads

        def forward(hidden_states, *args, **kwargs):                    # BertAttention.forward's contract
            mixed = multi_head_attention(hidden_states, hidden_states, hidden_states, heads,
                                         attention.self.query, attention.self.key, attention.self.value,
                                         attention.output.dense, mask)
            return attention.output.LayerNorm(mixed + hidden_states), None   # dropout is off in eval mode
        return forward

    patched = []
    try:
        for layer in model.encoder.layer:
            attention = layer.attention
            if "forward" in attention.__dict__:
                raise RuntimeError("this model's attention is already patched; is another check still running?")
            attention.forward = replacement(attention)
            patched.append(attention)
        yield model
    finally:
        for attention in patched:
            del attention.forward                                       # back to BertAttention.forward


def minilm_embeddings_with_learner_attention(sub, sentences: list[str]):
    """all-MiniLM-L6-v2 sentence embeddings [len(sentences), 384] with the learner's multi_head_attention in
    every layer; compare with mean_pooled_embeddings of the unmodified model."""
    import torch

    from llmstudy import models

    model, tokenizer = models.load("minilm", "cpu")
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with bert_self_attention_replaced(model, sub.multi_head_attention, batch["attention_mask"]):
        embeddings = mean_pooled_embeddings(model, tokenizer, sentences)
    return torch.as_tensor(embeddings)


def multi_head_attention_with_linears(sub, query, key, value, num_heads: int, weights: dict, mask=None,
                                      plain_functions: bool = False):
    """Call the learner's multi_head_attention with projections built here from `weights`
    ({"q": (W, b), "k": ..., "v": ..., "out": ...}): nn.Linear modules, or plain functions when plain_functions
    (the API promises only callables). Modules can't cross to the learner's process; their weights can."""
    import torch

    projections = {}
    for name, (weight, bias) in weights.items():
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        projections[name] = (lambda x, w=weight, b=bias: x @ w.T + b) if plain_functions else linear
    with torch.no_grad():
        return sub.multi_head_attention(query, key, value, num_heads, projections["q"], projections["k"],
                                        projections["v"], projections["out"], mask)


# --- generation / prompting ---
# Exercise 04 runs the learner's loop with a real model; exercise 05 gives fit_few_shot_prompt a real tokenizer.

def generate_with_model(sub, model, input_ids, max_new_tokens, **kwargs):
    """The learner's generate(model, input_ids, max_new_tokens, **kwargs), with `model` passed by name.

    Runs on one thread (bit-stable logits, so that greedy tokens compare exactly with transformers' generate()), under
    no_grad, and with model.generate() refused: the exercise is to write the loop, not to call the library's."""
    import torch

    def refuse(*args, **kw):
        raise RuntimeError("model.generate() was called; write the loop yourself with model(ids).logits")

    if "generate" in vars(model):
        raise RuntimeError("model.generate is already replaced; is another check still running?")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.generate = refuse
    try:
        with torch.no_grad():
            return sub.generate(model, input_ids, max_new_tokens, **kwargs)
    finally:
        del model.generate                      # back to the class's generate()
        torch.set_num_threads(threads)


def fit_few_shot_with_tokenizer(sub, tokenizer_name: str, *args, **kwargs) -> dict:
    """The learner's fit_few_shot_prompt(examples, dialogue, tokenizer, ...) with a real tokenizer, which can't
    cross by value: it is loaded here by name ("smollm2", "minilm") and inserted as the third argument.

    Returns {"returned": what the learner returned} or {"raised": [exception class names, MRO], "message": str}."""
    from llmstudy import models

    tokenizer = models.load(tokenizer_name, "cpu")[1]
    examples, dialogue, *rest = args
    try:
        return {"returned": sub.fit_few_shot_prompt(examples, dialogue, tokenizer, *rest, **kwargs)}
    except Exception as exc:  # noqa: BLE001 - the grader decides whether this exception was the right answer
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return {"raised": [cls.__name__ for cls in type(exc).__mro__], "message": text}
