"""How graders see a learner's work: an object whose attributes are the learner's functions.

    submission.top_p_filter(logits, 0.8)                   # a learner function; args and result cross by value
    submission.generate(ModelRef("smollm2"), ids, 10)      # models cross by name, never as objects
    submission.harness("multi_head_attention_with_linears", q, k, v, 12, weights)  # grader.harness code beside theirs

The same hidden tests run against InProcessSubmission (a learner's self-check, `llmstudy check`) and against the
sandboxed process of official grading (grader.sandbox), which implements the same two methods.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

from grader import codec
from grader.codec import ModelRef  # noqa: F401  (re-exported for graders)


class LearnerError(Exception):
    """The learner's code failed; str(self) is a message fit to show the learner."""


class SubmissionTimeout(LearnerError):
    pass


class Submission:
    exercise: str

    def call(self, fn: str, *args, **kwargs) -> Any:
        raise NotImplementedError

    def harness(self, name: str, *args, **kwargs) -> Any:
        raise NotImplementedError

    def __getattr__(self, fn: str):
        if fn.startswith("_"):
            raise AttributeError(fn)
        return functools.partial(self.call, fn)


def describe_exception(where: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{where} raised {type(exc).__name__}" + (f": {text[:300]}" if text else "")


def run_call(namespace: Mapping[str, Any], fn: str, args_blob: bytes, device: str, harness: bool) -> bytes:
    """Learner side of one call: decode args, run the learner function (or a harness function), encode the result.

    Raises LearnerError with a learner-facing message. Shared by the in-process and the sandboxed submission."""
    from llmstudy import models

    resolved = []

    def resolve(name):
        resolved.append(name)
        return models.load(name, device)[0]

    args, kwargs = codec.decode(args_blob, resolve_model=resolve, device="cpu")
    if resolved and device != "cpu":   # a call with a model on the GPU gets its tensors and generators there too
        args, kwargs = codec.to_device((args, kwargs), device)
    if harness:
        from grader import harness as harness_module
        target = getattr(harness_module, fn)
        args = (LearnerFunctions(namespace),) + tuple(args)
        where = f"your code (checked by {fn})"
    else:
        target = namespace.get(fn)
        if not callable(target):
            raise LearnerError(f"no function named {fn}() was found; define it with exactly this name")
        where = f"{fn}()"
    try:
        result = target(*args, **kwargs)
    except LearnerError:
        raise
    except Exception as exc:  # noqa: BLE001 - any learner failure becomes a message
        raise LearnerError(describe_exception(where, exc)) from None
    try:
        return codec.encode(result, where=f"the value returned by {fn}()")
    except codec.UnsupportedValue as exc:
        raise LearnerError(str(exc)) from None


class LearnerFunctions:
    """What grader.harness functions receive: attribute access to the learner's own functions, in-process."""

    def __init__(self, namespace: Mapping[str, Any]):
        self._ns = namespace

    def __getattr__(self, fn: str):
        target = self._ns.get(fn)
        if not callable(target):
            raise LearnerError(f"no function named {fn}() was found; define it with exactly this name")
        return target


class InProcessSubmission(Submission):
    """The learner's functions in this process (self-check). Values still round-trip through the codec, so a
    self-check behaves exactly like official grading."""

    def __init__(self, namespace: Mapping[str, Any], exercise: str, device: str = "cpu"):
        self.namespace = namespace
        self.exercise = exercise
        self.device = device

    def call(self, fn: str, *args, **kwargs) -> Any:
        blob = run_call(self.namespace, fn, codec.encode((list(args), kwargs)), self.device, harness=False)
        return codec.decode(blob)

    def harness(self, name: str, *args, **kwargs) -> Any:
        blob = run_call(self.namespace, name, codec.encode((list(args), kwargs)), self.device, harness=True)
        return codec.decode(blob)
