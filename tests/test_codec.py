"""Values cross the learner/grader boundary by value, and nothing that merely claims equality gets through."""
from __future__ import annotations

import math

import pytest
import torch

from llmstudy.grader import codec
from llmstudy.grader.codec import ModelRef


def roundtrip(value, **kw):
    return codec.decode(codec.encode(value), **kw)


def test_plain_values_roundtrip_exactly():
    value = {"a": [1, 2.5, "x", None, True], "t": (torch.arange(6).reshape(2, 3), torch.tensor([True, False])),
             "f": float("-inf"), "dt": torch.float64}
    back = roundtrip(value)
    assert back["a"] == [1, 2.5, "x", None, True] and type(back["a"][4]) is bool
    assert torch.equal(back["t"][0], value["t"][0]) and back["t"][1].dtype == torch.bool
    assert isinstance(back["t"], tuple) and back["f"] == -math.inf and back["dt"] is torch.float64
    assert math.isnan(roundtrip(float("nan")))


def test_tensor_is_copied_not_shared():
    t = torch.zeros(3)
    back = roundtrip(t)
    back += 1
    assert torch.equal(t, torch.zeros(3))


def test_tensor_subclass_is_rejected():
    class Liar(torch.Tensor):
        def __eq__(self, other):
            return torch.ones_like(self, dtype=torch.bool)
    with pytest.raises(codec.UnsupportedValue, match="tensor subclass"):
        codec.encode(torch.zeros(2).as_subclass(Liar))


def test_always_equal_object_is_rejected():
    class AlwaysEqual:
        def __eq__(self, other):
            return True
    with pytest.raises(codec.UnsupportedValue, match="AlwaysEqual"):
        codec.encode([1, AlwaysEqual()], where="result")


def test_int_subclass_is_rejected():
    class Sneaky(int):
        def __eq__(self, other):
            return True
    with pytest.raises(codec.UnsupportedValue):
        codec.encode(Sneaky(3))


def test_generator_state_crosses():
    g = torch.Generator().manual_seed(7)
    torch.rand(5, generator=g)                       # advance it: the state, not just the seed, must cross
    g2 = roundtrip(g, allow=codec.ARGUMENT_KINDS)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=g2))


def test_model_refs_resolve_only_on_the_learner_side():
    with pytest.raises(codec.UnsupportedValue, match="can't cross here"):
        roundtrip(ModelRef("smollm2"))                                   # a learner can't return a model
    with pytest.raises(codec.UnsupportedValue, match="bundled model"):
        roundtrip(ModelRef("../../etc/passwd"), allow=codec.ARGUMENT_KINDS, resolve_model=str)
    assert roundtrip([ModelRef("smollm2")], allow=codec.ARGUMENT_KINDS,
                     resolve_model=lambda name: f"<{name}>") == ["<smollm2>"]


def forged(tree, tensors=b"") -> bytes:
    import json
    import struct
    header = json.dumps(tree).encode()
    return struct.pack("<Q", len(header)) + header + tensors


@pytest.mark.parametrize("tree, why", [
    ({"dtype": "Tensor"}, "unknown dtype"),                                # was getattr(torch, NAME) for any name
    ({"dtype": "load"}, "unknown dtype"),
    ({"generator": "t0", "seed": 1}, "can't cross here"),                 # argument kinds never come back
    ({"linear": [{"tensor": "t0"}, {"tensor": "t1"}]}, "can't cross here"),
    ({"tensor": "t9"}, "not there"),
    ({"float": "1e999"}, "nan or inf"),
    ({"pickle": "x"}, "can't cross here"),
    ({"list": [1], "dict": {}}, "can't cross here"),                       # two kinds in one node
    ({"list": {"a": 1}}, "must hold a list"),
    ([1, 2], "unknown value"),
])
def test_malformed_answers_are_rejected_with_a_message(tree, why):
    with pytest.raises(codec.UnsupportedValue, match=why):
        codec.decode(forged(tree))


def test_deep_nesting_and_garbage_are_rejected():
    deep = {"list": []}
    node = deep
    for _ in range(codec.MAX_DEPTH + 5):
        node["list"].append({"list": []})
        node = node["list"][0]
    with pytest.raises(codec.UnsupportedValue, match="nested deeper"):
        codec.decode(forged(deep))
    for garbage in (b"", b"\xff" * 7, b"\x10\x00\x00\x00\x00\x00\x00\x00{", forged({"tensor": "t0"}, b"junk")):
        with pytest.raises(codec.UnsupportedValue):
            codec.decode(garbage)


def test_blob_holds_no_pickle():
    blob = codec.encode({"x": torch.ones(2)})
    assert b"\x80\x04" not in blob[:16] and blob[8:9] == b"{"   # JSON header, then safetensors
