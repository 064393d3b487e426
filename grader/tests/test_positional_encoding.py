"""Hidden graders for exercise 01, positional_encoding(seq_len, d_model, base=10000.0) -> float32 [seq_len, d_model].

Oracles: a float64 evaluation of the formula in Vaswani et al. §3.5, transformers' DistilBERT
create_sinusoidal_embeddings (interleaved sin/cos, the same formula with base 10000), and solutions/.

PYTEST_DONT_REWRITE: a learner sees only the assert messages, even when grade() runs inside another pytest
session (whose assertion rewriting would otherwise add source expressions and object addresses).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import llmstudy.solutions.positional_encoding as ref

# A float32 implementation computes the angle pos / base**(2i/d_model) with a relative error of a few float32 ulps,
# i.e. an absolute error that grows with pos: measured up to 3.1e-5 at 512 x 512 (6e-5 at pos 1023). 1e-4 accepts every
# float32 formulation (pow, exp/log, loops) up to 512 positions; the bugs this catches are off by O(0.1) or more.
ATOL = 1e-4


def formula64(seq_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The paper's formula written element by element in float64: an oracle independent of solutions/."""
    table = torch.empty(seq_len, d_model, dtype=torch.float64)
    for pos in range(seq_len):
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            table[pos, 2 * i] = math.sin(angle)
            table[pos, 2 * i + 1] = math.cos(angle)
    return table


def table_from(submission, seq_len: int, d_model: int, **kwargs) -> torch.Tensor:
    call = f"positional_encoding({seq_len}, {d_model}" + "".join(f", {k}={v}" for k, v in kwargs.items()) + ")"
    out = submission.positional_encoding(seq_len, d_model, **kwargs)
    assert isinstance(out, torch.Tensor), f"{call} returned {type(out).__name__}; return a torch.Tensor"
    assert tuple(out.shape) == (seq_len, d_model), \
        f"{call} returned shape {list(out.shape)}; expected [seq_len, d_model] = [{seq_len}, {d_model}]"
    return out


def explain_mismatch(got: torch.Tensor, want: torch.Tensor, call: str, atol: float = ATOL) -> str | None:
    """None if got matches want within atol; else a message naming the first wrong entry and which formula applies."""
    err = (got.double() - want).abs()
    if not bool((err > atol).any()) and not bool(got.isnan().any()):
        return None
    pos, col = (int(v) for v in torch.nonzero((err > atol) | got.isnan())[0])
    i, kind = col // 2, "sin" if col % 2 == 0 else "cos"
    return (f"{call}: PE[{pos}, {col}] = {float(got[pos, col]):.6f}, but column {col} is "
            f"{kind}(pos / base**(2i/d_model)) with i={i}, which gives {float(want[pos, col]):.6f}")


def raised(submission, *args) -> list[str] | None:
    """The raised classes, or None. Points only for work done: an input check counts once a plain table is right,
    so code that raises for everything gains nothing."""
    kind = submission.harness("exception_raised", "positional_encoding", *args)
    if kind is not None:
        problem = explain_mismatch(table_from(submission, 6, 8), formula64(6, 8), "positional_encoding(6, 8)")
        assert problem is None, f"{problem}; input checks count once the table itself is right"
    return kind


@pytest.mark.concepts("positional-encoding")
@pytest.mark.public
@pytest.mark.points(1)
def test_shape_and_dtype(submission):
    out = table_from(submission, 10, 16)
    assert out.dtype == torch.float32, f"positional_encoding(10, 16) returned {out.dtype}; return float32"
    problem = explain_mismatch(out, formula64(10, 16), "positional_encoding(10, 16)")   # a shape of zeros is no table
    assert problem is None, problem


@pytest.mark.concepts("positional-encoding")
@pytest.mark.public
@pytest.mark.points(1)
def test_position_zero_is_sin_0_and_cos_0(submission):
    row = table_from(submission, 1, 8)[0]
    want = torch.tensor([0.0, 1.0] * 4)
    # sin(0) and cos(0) are exact in any float format; 1e-6 only absorbs a float32 round trip.
    assert torch.allclose(row.double(), want.double(), atol=1e-6), \
        f"positional_encoding(1, 8)[0] is {[round(float(v), 4) for v in row]}; at pos 0 every even column is " \
        "sin(0) = 0 and every odd column is cos(0) = 1"


@pytest.mark.concepts("positional-encoding")
@pytest.mark.public
@pytest.mark.points(2)
def test_small_table_matches_the_formula(submission):
    got = table_from(submission, 6, 8)
    problem = explain_mismatch(got, formula64(6, 8), "positional_encoding(6, 8)")
    assert problem is None, problem


@pytest.mark.concepts("positional-encoding")
@pytest.mark.public
@pytest.mark.points(1)
def test_odd_d_model_raises_value_error(submission):
    kind = raised(submission, 4, 7)
    assert kind is not None, "positional_encoding(4, 7) returned a table; an odd d_model must raise ValueError"
    assert "ValueError" in kind, f"positional_encoding(4, 7) raised {kind[0]}; raise ValueError for an odd d_model"


@pytest.mark.concepts("positional-encoding")
@pytest.mark.points(1)
def test_sizes_below_one_raise_value_error(submission):
    for args in [(0, 8), (5, 0), (-3, 8), (5, -2)]:
        kind = raised(submission, *args)
        call = f"positional_encoding{args}"
        assert kind is not None, f"{call} returned a value; sizes below 1 must raise ValueError"
        assert "ValueError" in kind, f"{call} raised {kind[0]}; raise ValueError when a size is < 1"


@pytest.mark.concepts("positional-encoding")
@pytest.mark.points(2)
def test_matches_distilbert_sinusoidal_embeddings(submission):
    got = table_from(submission, 64, 128)
    problem = explain_mismatch(got, distilbert_table().double(), "positional_encoding(64, 128)")
    assert problem is None, problem


@functools.cache
def distilbert_table() -> torch.Tensor:
    """[64, 128] float32, once per process (a Python loop over 8,192 entries: ~12 ms a grade otherwise); the tests
    only read it."""
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    oracle = torch.empty(64, 128)
    create_sinusoidal_embeddings(64, 128, oracle)   # numpy float64, then cast to float32; interleaved like §3.5
    return oracle


@pytest.mark.concepts("positional-encoding")
@pytest.mark.points(1)
def test_512_positions_stay_accurate_in_float32(submission):
    got = table_from(submission, 512, 512)
    assert got.dtype == torch.float32, f"positional_encoding(512, 512) returned {got.dtype}; return float32"
    problem = explain_mismatch(got, ref.positional_encoding(512, 512).double(), "positional_encoding(512, 512)")
    assert problem is None, problem


@pytest.mark.concepts("positional-encoding")
@pytest.mark.points(1)
def test_base_argument_is_used(submission):
    got = table_from(submission, 20, 16, base=100.0)
    problem = explain_mismatch(got, formula64(20, 16, base=100.0), "positional_encoding(20, 16, base=100.0)")
    assert problem is None, problem


@pytest.mark.concepts("positional-encoding")
@pytest.mark.points(1)
def test_d_model_2_is_one_sin_cos_pair(submission):
    got = table_from(submission, 12, 2)
    problem = explain_mismatch(got, formula64(12, 2), "positional_encoding(12, 2)")
    assert problem is None, problem


@pytest.mark.concepts("positional-encoding")
@pytest.mark.points(1)
def test_unusual_shapes_match(submission):
    for seq_len, d_model in [(1, 2), (3, 10), (100, 6), (7, 34)]:
        got = table_from(submission, seq_len, d_model)
        problem = explain_mismatch(got, ref.positional_encoding(seq_len, d_model).double(),
                                   f"positional_encoding({seq_len}, {d_model})")
        assert problem is None, problem
