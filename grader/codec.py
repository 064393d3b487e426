"""Values cross between the learner's process and the grader by value, in a safe format: JSON + safetensors.

Nothing is ever unpickled. Only exact types cross: tensors (plain torch.Tensor or nn.Parameter), bool, int, float,
str, None, torch dtypes, and list/tuple/dict of these. Arguments (grader -> learner) may also hold a model or a
tokenizer passed by name (ModelRef, TokenizerRef), a linear layer passed by its weights (Linear) and a
torch.Generator (its state). A tensor subclass or an object that claims equality does not cross: it is rejected with
a message, so it can never make a comparison pass.

Decoding is strict, because what comes back from a child is hostile: each direction has a whitelist of kinds, dtypes
come from a fixed list, and depth, node count and tensor references are checked. Anything else is UnsupportedValue,
which fails that one call with a message, never the batch.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


@dataclass(frozen=True)
class ModelRef:
    """A pretrained model passed by name ("smollm2"); the learner's side gets a proxy whose forward passes run in
    the grader's process (grader/model_proxy.py)."""
    name: str


@dataclass(frozen=True)
class TokenizerRef:
    """A tokenizer passed by name ("smollm2", "minilm"); the learner's side loads the tokenizer files (no weights)."""
    name: str


@dataclass(frozen=True)
class Linear:
    """y = x @ weight.T + bias for the learner's code: an nn.Linear there, or a plain function when not module."""
    weight: torch.Tensor        # [out, in]
    bias: torch.Tensor          # [out]
    module: bool = True


class UnsupportedValue(TypeError):
    pass


RESULT_KINDS = frozenset({"float", "tensor", "list", "tuple", "dict", "dtype"})
ARGUMENT_KINDS = RESULT_KINDS | {"model", "tokenizer", "linear", "generator"}
DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128")}
MAX_DEPTH = 32
MAX_NODES = 1_000_000
MODEL_NAMES = frozenset({"smollm2", "minilm"})

_PLAIN = (bool, int, float, str)
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _tree(x: Any, tensors: dict[str, torch.Tensor], where: str):
    t = type(x)
    if x is None or t in _PLAIN:
        return x if t is not float or x == x and abs(x) != float("inf") else {"float": repr(x)}
    if t in _TENSOR_TYPES:
        key = f"t{len(tensors)}"
        tensors[key] = x.detach().to("cpu").contiguous().clone()
        return {"tensor": key}
    if t is list or t is tuple:
        return {t.__name__: [_tree(v, tensors, f"{where}[{i}]") for i, v in enumerate(x)]}
    if t is dict:
        if not all(type(k) is str for k in x):
            raise UnsupportedValue(f"{where} is a dict with non-string keys; use string keys")
        return {"dict": {k: _tree(v, tensors, f"{where}[{k!r}]") for k, v in x.items()}}
    if t is ModelRef:
        return {"model": x.name}
    if t is TokenizerRef:
        return {"tokenizer": x.name}
    if t is Linear:
        return {"linear": [_tree(x.weight, tensors, where), _tree(x.bias, tensors, where)], "module": x.module}
    if t is torch.Generator:
        key = f"t{len(tensors)}"
        tensors[key] = x.get_state() if x.device.type == "cpu" else torch.tensor([x.initial_seed()])
        return {"generator": key, "seed": x.initial_seed()}
    if t is torch.dtype:
        return {"dtype": str(x).removeprefix("torch.")}
    if isinstance(x, torch.Tensor):
        raise UnsupportedValue(f"{where} is a {t.__qualname__} (a tensor subclass); return a plain torch.Tensor")
    raise UnsupportedValue(f"{where} is a {t.__qualname__}; expected a tensor, number, string, None, "
                           "or a list/tuple/dict of these")


def encode(value: Any, where: str = "value") -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    try:
        header = json.dumps(_tree(value, tensors, where)).encode()
    except RecursionError:
        raise UnsupportedValue(f"{where} is nested too deeply; return a flatter value") from None
    return struct.pack("<Q", len(header)) + header + (st_save(tensors) if tensors else b"")


def decode(blob: bytes, allow: frozenset[str] = RESULT_KINDS, resolve_model: Callable[[str], Any] | None = None,
           resolve_tokenizer: Callable[[str], Any] | None = None, device: str = "cpu") -> Any:
    """Inverse of encode, accepting only the kinds in `allow` (RESULT_KINDS for what a learner returns).
    resolve_model / resolve_tokenizer turn a ModelRef / TokenizerRef into objects (learner side only)."""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        if n > len(blob) - 8:
            raise ValueError("truncated")
        tree = json.loads(blob[8:8 + n])
        tensors = st_load(blob[8 + n:]) if len(blob) > 8 + n else {}
    except (struct.error, ValueError, RecursionError, UnicodeDecodeError, Exception) as exc:  # noqa: BLE001
        raise UnsupportedValue(f"the value could not be read ({type(exc).__name__})") from None
    nodes = 0

    def tensor(key):
        if type(key) is not str or key not in tensors:
            raise UnsupportedValue("a value refers to a tensor that is not there")
        return tensors[key]

    def build(node, depth: int):
        nonlocal nodes
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            raise UnsupportedValue(f"the value is nested deeper than {MAX_DEPTH} or has over {MAX_NODES} parts")
        if node is None or type(node) in _PLAIN:
            return node
        if type(node) is not dict or not node:
            raise UnsupportedValue(f"unknown value {type(node).__name__}")
        kind = next(iter(node))
        extra = set(node) - {kind} - ({"seed"} if kind == "generator" else {"module"} if kind == "linear" else set())
        if kind not in allow or extra:
            raise UnsupportedValue(f"a value of kind {kind!r} can't cross here")
        val = node[kind]
        if kind == "float":
            if val not in ("nan", "inf", "-inf"):
                raise UnsupportedValue("a float must be a number, nan or inf")
            return float(val)
        if kind == "tensor":
            return tensor(val).to(device)
        if kind in ("list", "tuple"):
            if type(val) is not list:
                raise UnsupportedValue(f"a {kind} must hold a list")
            items = [build(v, depth + 1) for v in val]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            if type(val) is not dict:
                raise UnsupportedValue("a dict must hold an object")
            return {k: build(v, depth + 1) for k, v in val.items()}
        if kind == "dtype":
            if val not in DTYPES:
                raise UnsupportedValue(f"unknown dtype {str(val)[:40]!r}")
            return DTYPES[val]
        if kind in ("model", "tokenizer"):
            resolve = resolve_model if kind == "model" else resolve_tokenizer
            if resolve is None or val not in MODEL_NAMES:
                raise UnsupportedValue(f"a {kind} reference can only name a bundled model")
            return resolve(val)
        if kind == "linear":
            weight, bias = (tensor(v.get("tensor")) if type(v) is dict else None for v in val)
            return _linear(weight.to(device), bias.to(device), bool(node.get("module", True)))
        if kind == "generator":
            gen = torch.Generator(device=device)
            state = tensor(val)
            if gen.device.type == "cpu" and state.dtype == torch.uint8:
                gen.set_state(state)
            else:
                gen.manual_seed(int(node["seed"]))
            return gen
        raise UnsupportedValue(f"unknown value kind {kind!r}")

    return build(tree, 0)


def _linear(weight: torch.Tensor, bias: torch.Tensor, module: bool):
    if not module:
        return lambda x: x @ weight.T + bias
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], device=weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def to_device(value: Any, device: str) -> Any:
    """Move tensors in a decoded tree to `device`; CPU generators become generators on `device`, same seed."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, torch.Generator):
        return torch.Generator(device=device).manual_seed(value.initial_seed())
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
