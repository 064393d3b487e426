"""How graders see a learner's work: an object whose attributes are the learner's functions, called by value.

    submission.top_p_filter(logits, 0.8)                   # a value back, or LearnerError with a message
    submission.outcome("positional_encoding", 4, 7)        # Returned(value) or Raised(classes, message)
    submission.modified("top_k_filter", logits, 3)         # (names of arguments changed in place, outcome)
    submission.generate(ModelRef("smollm2"), ids, 10)      # the learner gets a proxy; forward passes run here
    submission.harness("multi_head_attention_with_linears", q, k, v, 12, weights)   # a check in grader/checks.py

The same hidden tests run against InProcessSubmission (a learner's self-check, `llmstudy check`) and against the
sandboxed child of official grading (grader/sandbox/client.py), which implement one method, `_invoke`. Everything
that decides a verdict runs in the grader's process; the learner's side only runs the learner's functions.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

from llmstudy.grader import codec
from llmstudy.grader.codec import Linear, ModelRef, TokenizerRef  # noqa: F401  (re-exported for graders)


class LearnerError(Exception):
    """The learner's code failed; str(self) is a message fit to show the learner."""


class SubmissionTimeout(LearnerError):
    pass


@dataclass(frozen=True)
class Returned:
    value: Any


@dataclass(frozen=True)
class Raised:
    """An exception the learner's function raised: its classes' qualified names, MRO order ("builtins.ValueError",
    ...), and the first line of its message. The learner's side can claim any names; the claim is worth what raising
    that exception is worth, and a learner-defined class of the same bare name is not the builtin."""
    classes: tuple[str, ...]
    message: str

    def names(self) -> list[str]:
        """Builtins by bare name, others qualified: `"ValueError" in raised.names()` means builtins.ValueError."""
        return [c.removeprefix("builtins.") if c.count(".") == 1 and c.startswith("builtins.") else c
                for c in self.classes]

    def describe(self, where: str) -> str:
        name = self.classes[0].rsplit(".", 1)[-1] if self.classes else "an exception"
        return f"{where} raised {name}" + (f": {self.message}" if self.message else "")


class Submission:
    exercise: str

    def _invoke(self, fn: str, args: tuple, kwargs: dict, watch: bool) -> tuple[str, Any, list[str]]:
        """("value", v, changed) or ("raised", Raised, changed); changed names the tensor arguments the call changed
        in place (only when watch). Raises LearnerError for a missing function or an unreadable value."""
        raise NotImplementedError

    def outcome(self, fn: str, *args, **kwargs) -> Returned | Raised:
        kind, value, _ = self._invoke(fn, args, kwargs, watch=False)
        return Returned(value) if kind == "value" else value

    def call(self, fn: str, *args, **kwargs) -> Any:
        kind, value, _ = self._invoke(fn, args, kwargs, watch=False)
        if kind == "raised":
            raise LearnerError(value.describe(f"{fn}()"))
        return value

    def modified(self, fn: str, *args, **kwargs) -> tuple[list[str], Returned | Raised]:
        kind, value, changed = self._invoke(fn, args, kwargs, watch=True)
        return changed, (Returned(value) if kind == "value" else value)

    def harness(self, name: str, *args, **kwargs) -> Any:
        from llmstudy.grader import checks
        return getattr(checks, name)(self, *args, **kwargs)

    def __getattr__(self, fn: str):
        if fn.startswith("_"):
            raise AttributeError(fn)
        return functools.partial(self.call, fn)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class InProcessSubmission(Submission):
    """The learner's functions in this process (self-check). Values still round-trip through the codec and models
    are the same proxies as in grading, so a self-check behaves exactly like official grading."""

    def __init__(self, namespace: Mapping[str, Any], exercise: str, device: str = "cpu"):
        from llmstudy.grader.model_proxy import InProcessTransport
        from llmstudy.grader.model_server import ModelServer
        self.namespace, self.exercise, self.device = namespace, exercise, device
        self.server = ModelServer(device)
        self._transport = InProcessTransport(self.server)

    def _invoke(self, fn: str, args: tuple, kwargs: dict, watch: bool) -> tuple[str, Any, list[str]]:
        import torch

        from llmstudy.grader.model_proxy import ModelProxy
        from llmstudy import models
        target = self.namespace.get(fn)
        if not callable(target):
            raise LearnerError(f"no function named {fn}() was found; define it with exactly this name")
        args, kwargs = codec.decode(codec.encode((list(args), kwargs)), allow=codec.ARGUMENT_KINDS,
                                    resolve_model=lambda name: ModelProxy(name, self._transport, self.device),
                                    resolve_tokenizer=models.load_tokenizer)
        if self.device != "cpu":
            args, kwargs = codec.to_device((args, kwargs), self.device)
        named = {f"argument {i + 1}": a for i, a in enumerate(args)} | dict(kwargs)
        before = {n: t.clone() for n, t in named.items() if watch and type(t) is torch.Tensor}
        try:
            value = target(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any exception is an answer
            kind, value = "raised", Raised(tuple(_qualname(c) for c in type(exc).__mro__),
                                           str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "")
        else:
            try:
                kind, value = "value", codec.decode(codec.encode(value, where=f"the value returned by {fn}()"))
            except codec.UnsupportedValue as exc:
                raise LearnerError(str(exc)) from None
        changed = [n for n, t in before.items() if t.shape != named[n].shape
                   or not torch.equal(t.isnan(), named[n].isnan())
                   or not torch.equal(t.nan_to_num(), named[n].nan_to_num())]
        return kind, value, changed
