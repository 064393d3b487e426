"""Grader code that must run beside the learner's code (in the sandboxed child during official grading).

Each function takes `sub` (the learner's functions, by attribute) first and returns plain values, which then cross
back to the trusted grader by value. Used for checks that need the learner's code and a real model together, or that
need to observe the learner's process (e.g. whether an input was modified in place).
"""
from __future__ import annotations


# --- attention / sampling ---
# Generic checks (any exercise may use them) and exercise 02's multi_head_attention with real nn.Linear projections
# (the MiniLM check calls it once per layer; its model runs on the grader's side, see grader/tests/test_attention.py).

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
