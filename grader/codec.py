"""Values cross between the learner's process and the grader by value, in a safe format: JSON + safetensors.

Nothing is ever unpickled. Only exact types cross: tensors (plain torch.Tensor or nn.Parameter), bool, int, float,
str, None, and list/tuple/dict of these; plus two argument-only kinds: a model passed by name (ModelRef) and a
torch.Generator (its state). A tensor subclass or an object that claims equality does not cross: it is rejected with
a message, so it can never make a comparison pass.
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
    """A pretrained model passed by name ("smollm2", "minilm"); each side loads its own copy."""
    name: str


class UnsupportedValue(TypeError):
    pass


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
    header = json.dumps(_tree(value, tensors, where)).encode()
    return struct.pack("<Q", len(header)) + header + (st_save(tensors) if tensors else b"")


def decode(blob: bytes, resolve_model: Callable[[str], Any] | None = None, device: str = "cpu") -> Any:
    """Inverse of encode. resolve_model turns a ModelRef into a loaded model (learner side only)."""
    (n,) = struct.unpack("<Q", blob[:8])
    tree = json.loads(blob[8:8 + n])
    tensors = st_load(blob[8 + n:]) if len(blob) > 8 + n else {}

    def build(node):
        if not isinstance(node, dict):
            return node
        (kind, val), = [(k, v) for k, v in node.items() if k != "seed"]
        if kind == "float":
            return float(val)
        if kind == "tensor":
            return tensors[val].to(device)
        if kind in ("list", "tuple"):
            items = [build(v) for v in val]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            return {k: build(v) for k, v in val.items()}
        if kind == "model":
            if resolve_model is None:
                raise UnsupportedValue("a model reference can only be passed to the learner's code")
            return resolve_model(val)
        if kind == "generator":
            gen = torch.Generator(device=device)
            if gen.device.type == "cpu" and tensors[val].dtype == torch.uint8:
                gen.set_state(tensors[val])
            else:
                gen.manual_seed(node["seed"])
            return gen
        if kind == "dtype":
            return getattr(torch, val)
        raise UnsupportedValue(f"unknown value kind {kind!r}")

    return build(tree)


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
