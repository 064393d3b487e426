"""Grader side: checks that need more than one plain call of a learner function. They run in the grader's process
and reach the learner's code only through `sub` (grader.submission), by value; nothing here runs beside learner code.

Graders call them as `submission.harness(name, ...)`.
"""
from __future__ import annotations

from llmstudy.grader.codec import Linear, ModelRef, TokenizerRef
from llmstudy.grader.submission import Raised


def exception_raised(sub, fn: str, *args, **kwargs) -> list[str] | None:
    """None if the learner's `fn` returns, else the raised exception's classes (MRO): builtins by bare name, others
    qualified ("submission.ValueError"), so that `"ValueError" in raised` accepts a subclass of the builtin
    ValueError and not a look-alike class."""
    outcome = sub.outcome(fn, *args, **kwargs)
    return outcome.names() if isinstance(outcome, Raised) else None


def modified_inputs(sub, fn: str, *args, **kwargs) -> list[str]:
    """Names of the tensor arguments ("argument 1", "temperature", ...) that the learner's `fn` changed in place,
    observed from the grader's side (shared memory in grading; the decoded copies in a self-check)."""
    return sub.modified(fn, *args, **kwargs)[0]


def multi_head_attention_with_linears(sub, query, key, value, num_heads: int, weights: dict, mask=None,
                                      plain_functions: bool = False):
    """The learner's multi_head_attention with projections built from `weights` ({"q": (W, b), "k": ..., "v": ...,
    "out": ...}): nn.Linear modules on the learner's side, or plain functions when plain_functions (the API promises
    only callables)."""
    proj = {name: Linear(w, b, module=not plain_functions) for name, (w, b) in weights.items()}
    return sub.call("multi_head_attention", query, key, value, num_heads, proj["q"], proj["k"], proj["v"],
                    proj["out"], mask)


def generate_with_model(sub, model: ModelRef, input_ids, max_new_tokens, **kwargs):
    """The learner's generate(model, input_ids, max_new_tokens, **kwargs); `model` reaches it as a proxy whose forward
    passes run in the grader's process (grader/model_server.py). The proxy has no generate(): the exercise is the
    loop."""
    return sub.call("generate", model, input_ids, max_new_tokens, **kwargs)


def fit_few_shot_with_tokenizer(sub, tokenizer_name: str, examples, dialogue, *rest, **kwargs) -> dict:
    """The learner's fit_few_shot_prompt(examples, dialogue, tokenizer, ...) with a real tokenizer (it holds no
    weights, so the learner's side may have it). Returns {"returned": value} or {"raised": names, "message": str};
    the grader counts the returned prompt's tokens itself."""
    outcome = sub.outcome("fit_few_shot_prompt", examples, dialogue, TokenizerRef(tokenizer_name), *rest, **kwargs)
    if isinstance(outcome, Raised):
        return {"raised": outcome.names(), "message": outcome.message}
    return {"returned": outcome.value}
