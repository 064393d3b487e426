"""Learner side: the model object a learner's code gets while graded. It holds no weights.

    model(input_ids).logits                                   # float32 [B, L, V]
    out = model(step, past_key_values=past, use_cache=True)   # out.logits [B, l, V], out.past_key_values
    model.config.eos_token_id, model.device

Each call is sent to the grader's process (grader/model_server.py), which holds the only copy of the model and
answers with the logits. transformers' generate() and every other route to the library's decoding do not exist here:
the exercise is to write the loop. The same proxy is used in a self-check (in-process) and in the sandboxed child,
so the hidden tests never depend on which one they get.
"""
from __future__ import annotations

from typing import Any

import torch

SUPPORTED = "model(input_ids, attention_mask=None, past_key_values=None, use_cache=None)"


class PastKeyValues:
    """Stands for the key/value cache of an earlier call; the cache itself stays in the grader's process."""

    __slots__ = ("_handle", "_length")

    def __init__(self, handle: int, length: int):
        self._handle, self._length = handle, length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"PastKeyValues(length={self._length})"


class ModelOutput:
    """What a forward pass returns: .logits [B, L, V] and .past_key_values; out["logits"] and out[0] work too."""

    def __init__(self, logits: torch.Tensor, past_key_values: PastKeyValues | None):
        self.logits, self.past_key_values = logits, past_key_values

    def __getitem__(self, key):
        if key in ("logits", 0):
            return self.logits
        if key in ("past_key_values", 1) and self.past_key_values is not None:
            return self.past_key_values
        raise KeyError(key)


class Config:
    """The model's config as read-only plain values."""

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the model's config has no {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("the grading model's config is read-only")

    def to_dict(self) -> dict:
        return dict(self._values)


class ModelProxy:
    """`transport.forward(name, input_ids, past_handle) -> (logits, handle)`, `transport.info(name) -> dict`."""

    def __init__(self, name: str, transport, device: str = "cpu"):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_transport", transport)
        object.__setattr__(self, "_device", torch.device(device))
        object.__setattr__(self, "_config", None)

    @property
    def config(self) -> Config:
        if self._config is None:
            object.__setattr__(self, "_config", Config(self._transport.info(self._name)))
        return self._config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def eval(self) -> "ModelProxy":
        return self

    def __call__(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None,
                 return_dict=None, **unsupported) -> ModelOutput:
        if unsupported:
            raise TypeError(f"the grading model takes {SUPPORTED}; not {', '.join(sorted(unsupported))}")
        if input_ids is None:
            raise TypeError(f"the grading model takes {SUPPORTED}; input_ids is required")
        if attention_mask is not None and not (type(attention_mask) is torch.Tensor and bool(attention_mask.all())):
            raise ValueError("the grading model runs without padding: pass attention_mask=None (or all ones)")
        if past_key_values is not None and type(past_key_values) is not PastKeyValues:
            raise TypeError("past_key_values must be the .past_key_values of an earlier call of this model")
        past = None if past_key_values is None else past_key_values._handle
        before = 0 if past_key_values is None else past_key_values._length
        logits, handle = self._transport.forward(self._name, input_ids, past)
        return ModelOutput(logits.to(self._device), PastKeyValues(handle, before + int(logits.shape[1])))

    forward = __call__

    def __getattr__(self, name: str) -> Any:
        hint = " (write the loop yourself with model(ids).logits)" if "generat" in name else ""
        raise AttributeError(f"the grading model offers only {SUPPORTED}, .config and .device; "
                             f"'{name}' is not available{hint}")

    def __setattr__(self, name, value):
        raise AttributeError("the grading model can't be changed")

    def __repr__(self) -> str:
        return f"<grading model {self._name!r}: forward passes run in the grader's process>"


class InProcessTransport:
    """Self-check: the proxy calls a ModelServer in this very process (values still copied, as in grading)."""

    def __init__(self, server):
        self._server = server

    def forward(self, name: str, input_ids, past):
        from llmstudy.grader.model_server import ModelRequestError
        try:
            return self._server.forward(name, input_ids.detach().clone() if isinstance(input_ids, torch.Tensor)
                                        else input_ids, past)
        except ModelRequestError as exc:
            raise ValueError(str(exc)) from None

    def info(self, name: str) -> dict:
        return self._server.info(name)

