"""Hidden graders for exercise 03: apply_temperature, top_k_filter, top_p_filter, greedy_next_token, sample_next_token.

Oracles: transformers' TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper (applied in that order, as
generate() does), torch.argmax and softmax. Draws are never compared with the reference's draws: every drawn token
must lie in the filtered support, and the draw frequencies must pass a chi-square goodness-of-fit test against the
filtered softmax. Seeds are fixed, so each verdict is deterministic.

Test logits keep a margin from ties (except the deliberate tie test) and from the top-p boundaries, so that any
correct float32 or float64 implementation agrees on which tokens are kept.

PYTEST_DONT_REWRITE: a learner sees only the assert messages, even when grade() runs inside another pytest
session (whose assertion rewriting would otherwise add source expressions and object addresses).
"""
from __future__ import annotations

import functools

import pytest
import torch

# 8000 draws per test: a wrong distribution of the kind tested here (a token missing, temperature ignored) gives
# chi-square in the hundreds or more, while 8000 rows keep even a row-by-row Python loop under a second.
DRAWS = 8000
# A correct sampler fails a seeded test with probability 1e-6; the verdict for a given implementation is then fixed.
MIN_P_VALUE = 1e-6

# A distribution with clear gaps: cumulative 0.30, 0.52, 0.68, 0.80, 0.88, 0.94, 0.97, 0.99, 1.00.
PROBS = [0.30, 0.22, 0.16, 0.12, 0.08, 0.06, 0.03, 0.02, 0.01]
# Token PERM[r] has the r-th largest probability, so that vocabulary order and probability order differ.
PERM = [4, 7, 0, 8, 2, 5, 1, 3, 6]


def fixture_logits(offset: float = 3.0) -> torch.Tensor:
    """[9] logits: log(PROBS) placed at the positions PERM, plus a constant (softmax ignores it)."""
    logits = torch.empty(len(PROBS))
    logits[PERM] = torch.tensor(PROBS).log() + offset
    return logits


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def oracle(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None) -> torch.Tensor:
    """transformers' warpers, in generate()'s order, on [..., V] logits (the warpers themselves take [B, V])."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    rows = logits.reshape(-1, logits.shape[-1])
    if temperature != 1.0:
        rows = TemperatureLogitsWarper(temperature)(None, rows)
    if top_k is not None:
        rows = TopKLogitsWarper(top_k)(None, rows)
    if top_p is not None:
        rows = TopPLogitsWarper(top_p)(None, rows)
    return rows.reshape(logits.shape)


def margin_rows(count: int, vocab: int, ps: tuple[float, ...], seed: int, margin: float = 0.01) -> torch.Tensor:
    """[count, vocab] random logits whose sorted cumulative probabilities stay `margin` away from every p in ps."""
    return _margin_rows(count, vocab, ps, seed, margin).clone()


@functools.cache     # rejection sampling takes a few hundred candidates; graders run many times per process
def _margin_rows(count: int, vocab: int, ps: tuple[float, ...], seed: int, margin: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < count:
        row = torch.randn(vocab, generator=gen) * 3.0
        cumulative = torch.softmax(row.double(), -1).sort(descending=True).values.cumsum(-1)
        if all(bool(((cumulative - p).abs() > margin).all()) for p in ps):
            rows.append(row)
    return torch.stack(rows)


def tokens(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


def as_tensor(value, call: str) -> torch.Tensor:
    assert isinstance(value, torch.Tensor), f"{call} returned {type(value).__name__}; return a torch.Tensor"
    return value


def check_filter(got, logits: torch.Tensor, want: torch.Tensor, call: str, describe=None):
    """got must be -inf exactly where the oracle `want` is -inf, and equal to the input logits elsewhere."""
    got = as_tensor(got, call)
    assert tuple(got.shape) == tuple(logits.shape), \
        f"{call} returned shape {list(got.shape)}; a filter returns the logits' shape {list(logits.shape)}"
    removed_got, removed_want = torch.isneginf(got), torch.isneginf(want)
    assert not bool((torch.isfinite(got) & (got < -1e8)).any()), \
        f"{call} set some logits to a large negative number; a filtered logit must be float('-inf'), as the API says"
    rows_got = removed_got.reshape(-1, logits.shape[-1])
    rows_want = removed_want.reshape(-1, logits.shape[-1])
    for r in range(rows_got.shape[0]):
        kept_got, kept_want = int((~rows_got[r]).sum()), int((~rows_want[r]).sum())
        if kept_got != kept_want or not torch.equal(rows_got[r], rows_want[r]):
            where = f" in row {r}" if rows_got.shape[0] > 1 else ""
            if describe is not None and kept_got != kept_want:
                raise AssertionError(describe(kept_got, kept_want, where))
            if kept_got == kept_want:
                raise AssertionError(f"{call} kept {tokens(kept_got)}{where}, as many as it should, but not the "
                                     "right ones")
            raise AssertionError(f"{call} kept {tokens(kept_got)}{where} where {kept_want} should be kept")
    kept = ~removed_want
    assert torch.equal(got[kept].double(), logits[kept].double()), \
        f"{call} changed the logits it keeps; a filter only sets the removed ones to -inf"


def works_on_a_valid_input(submission, fn: str) -> None:
    """Points only for work done: an input check counts once `fn` also gets a plain case right, so code that raises
    for everything (or echoes its input) gains nothing from the ValueError tests."""
    logits = fixture_logits()
    if fn == "apply_temperature":
        got = as_tensor(submission.apply_temperature(logits, 2.0), "apply_temperature(logits, 2.0)")
        # float32 division against the warper's float32 division: equal up to rounding.
        assert tuple(got.shape) == tuple(logits.shape) and torch.allclose(got, oracle(logits, 2.0), atol=1e-6), \
            "apply_temperature(logits, 2.0) is not yet logits / 2.0; input checks count once it is"
    elif fn in ("top_k_filter", "top_p_filter"):
        value = 3 if fn == "top_k_filter" else 0.5
        want = oracle(logits, top_k=value) if fn == "top_k_filter" else oracle(logits, top_p=value)
        check_filter(getattr(submission, fn)(logits, value), logits, want, f"{fn}(logits, {value})")


def raised(submission, fn: str, *args, **kwargs) -> list[str] | None:
    kind = submission.harness("exception_raised", fn, *args, **kwargs)
    if kind is not None:
        works_on_a_valid_input(submission, fn)
    return kind


def assert_value_error(submission, call: str, fn: str, *args, **kwargs):
    kind = raised(submission, fn, *args, **kwargs)
    assert kind is not None, f"{call} returned a value; it must raise ValueError"
    assert "ValueError" in kind, f"{call} raised {kind[0]}; raise ValueError instead"


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's chi-square statistic and its p-value (upper tail, df = len - 1), in float64."""
    expected = probs.double() * counts.sum()
    stat = float(((counts.double() - expected) ** 2 / expected).sum())
    df = len(probs) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, p_value


def check_draws(submission, logits: torch.Tensor, call: str, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, seed: int = 0, filtered: torch.Tensor | None = None):
    """Draw DRAWS tokens from one row of logits [V] (a [DRAWS, V] batch in one call); check support and frequencies."""
    batch = logits.expand(DRAWS, -1).contiguous()
    draws = as_tensor(submission.sample_next_token(batch, temperature, top_k, top_p,
                                                   torch.Generator().manual_seed(seed)), call)
    assert tuple(draws.shape) == (DRAWS,), \
        f"{call} on logits of shape [{DRAWS}, {logits.shape[-1]}] returned shape {list(draws.shape)}; " \
        f"expected one token per row, shape [{DRAWS}]"
    assert not draws.is_floating_point(), f"{call} returned {draws.dtype}; return token indices (torch.long)"
    draws = draws.long()
    vocab = logits.shape[-1]
    assert bool(((draws >= 0) & (draws < vocab)).all()), f"{call} returned indices outside [0, {vocab})"
    if filtered is None:
        filtered = oracle(logits[None], temperature, top_k, top_p)[0]
    support = ~torch.isneginf(filtered)
    outside = draws[~support[draws]]
    assert outside.numel() == 0, \
        f"{call} drew token {int(outside[0])}, which the filters remove ({int(support.sum())} of {vocab} tokens " \
        f"should remain); {outside.numel()} of {DRAWS} draws were outside the filtered support"
    probs = torch.softmax(filtered.double(), -1)[support]
    counts = torch.bincount(draws, minlength=vocab)[support]
    if len(probs) < 2:
        return
    stat, p_value = chi_square_p_value(counts, probs)
    if p_value < MIN_P_VALUE:
        tokens = torch.nonzero(support).flatten()
        share = counts.double() / DRAWS
        worst = int((share - probs).abs().argmax())
        raise AssertionError(
            f"{call}: the draws don't follow the filtered softmax (chi-square {stat:.1f} on {len(probs) - 1} degrees "
            f"of freedom, p-value {p_value:.1e}); token {int(tokens[worst])} was drawn {100 * float(share[worst]):.1f}% "
            f"of the time, but has probability {100 * float(probs[worst]):.1f}% after the filters")


# ------------------------------------------------------------------------------------------------ apply_temperature

@pytest.mark.concepts("temperature")
@pytest.mark.public
@pytest.mark.points(1)
def test_temperature_divides_the_logits(submission):
    logits = randn(3, 7, seed=1, scale=2.0)
    for t in (0.5, 2.0):
        got = as_tensor(submission.apply_temperature(logits, t), f"apply_temperature(logits, {t})")
        want = oracle(logits, temperature=t)
        # x / t against x * (1 / t): at most 1 ulp of float32 apart, so rtol 1e-6.
        assert tuple(got.shape) == tuple(logits.shape) and torch.allclose(got.double(), want.double(), rtol=1e-6), \
            f"apply_temperature(logits, {t}) is not logits / {t}"


@pytest.mark.concepts("temperature")
@pytest.mark.public
@pytest.mark.points(1)
def test_temperature_must_be_positive(submission):
    for t in (0.0, -1.0):
        assert_value_error(submission, f"apply_temperature(logits, {t})", "apply_temperature", randn(5, seed=2), t)


# ----------------------------------------------------------------------------------------------------- top_k_filter

@pytest.mark.concepts("top-k-sampling")
@pytest.mark.public
@pytest.mark.points(1)
def test_top_k_keeps_the_k_largest(submission):
    logits = torch.tensor([1.0, 3.0, -1.0, 2.5, 0.5])
    got = submission.top_k_filter(logits, 2)
    want = torch.tensor([float("-inf"), 3.0, float("-inf"), 2.5, float("-inf")])
    check_filter(got, logits, want, "top_k_filter([1.0, 3.0, -1.0, 2.5, 0.5], k=2)")


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.public
@pytest.mark.points(1)
def test_top_k_keeps_ties_at_the_kth_value(submission):
    logits = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0])
    got = submission.top_k_filter(logits, 2)
    check_filter(got, logits, oracle(logits, top_k=2), "top_k_filter([3.0, 1.0, 2.0, 2.0, 0.0], k=2)",
                 lambda n_got, n_want, where: f"top_k_filter([3.0, 1.0, 2.0, 2.0, 0.0], k=2) kept {tokens(n_got)}; "
                 f"the two 2.0s tie at the 2nd largest value, and ties at the k-th value are all kept ({n_want})")


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.points(2)
def test_top_k_matches_transformers_warper(submission):
    logits = randn(4, 50, seed=3, scale=2.0)
    for k in (1, 5, 49, 50):
        got = submission.top_k_filter(logits, k)
        check_filter(got, logits, oracle(logits, top_k=k), f"top_k_filter(logits [4, 50], k={k})")


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.points(1)
def test_top_k_keeps_ties_in_every_row(submission):
    logits = torch.randint(-3, 4, (4, 12), generator=torch.Generator().manual_seed(29)).float()   # many ties
    for k in (2, 5):
        got = submission.top_k_filter(logits, k)
        check_filter(got, logits, oracle(logits, top_k=k), f"top_k_filter(logits [4, 12] with ties, k={k})")


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.points(1)
def test_top_k_larger_than_the_vocabulary_keeps_everything(submission):
    logits = randn(2, 10, seed=4)
    got = submission.top_k_filter(logits, 100)
    check_filter(got, logits, logits, "top_k_filter(logits [2, 10], k=100)")
    works_on_a_valid_input(submission, "top_k_filter")     # returning the input unchanged is not top-k


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.points(1)
def test_top_k_below_one_raises_value_error(submission):
    for k in (0, -1):
        assert_value_error(submission, f"top_k_filter(logits, k={k})", "top_k_filter", randn(6, seed=5), k)


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.points(1)
def test_top_k_any_batch_shape(submission):
    for shape in ((20,), (2, 3, 20)):
        logits = randn(*shape, seed=6, scale=2.0)
        got = submission.top_k_filter(logits, 4)
        check_filter(got, logits, oracle(logits, top_k=4), f"top_k_filter(logits {list(shape)}, k=4)")


# ----------------------------------------------------------------------------------------------------- top_p_filter

def too_many_or_few(p: float):
    def describe(n_got: int, n_want: int, where: str) -> str:
        if n_got > n_want:
            return f"top_p_filter kept {tokens(n_got)}{where} where {n_want} already reach p={p}"
        return (f"top_p_filter kept {tokens(n_got)}{where} where {n_want} are needed to reach p={p} (the token whose "
                "probability crosses p is kept, and at least one token always is)")
    return describe


@pytest.mark.concepts("top-p-sampling", "top-p-is-not-top-p-percent")
@pytest.mark.public
@pytest.mark.points(2)
def test_top_p_keeps_the_token_that_crosses_p(submission):
    logits = torch.tensor([0.10, 0.50, 0.05, 0.35]).log()      # sorted: 0.50, 0.35 (cumulative 0.85), ...
    for p in (0.8, 0.4, 0.9):
        got = submission.top_p_filter(logits, p)
        check_filter(got, logits, oracle(logits, top_p=p), f"top_p_filter(log([0.10, 0.50, 0.05, 0.35]), p={p})",
                     too_many_or_few(p))


@pytest.mark.concepts("top-p-sampling")
@pytest.mark.public
@pytest.mark.points(1)
def test_top_p_keeps_at_least_one_token(submission):
    logits = torch.tensor([0.2, 0.5, 0.3]).log()
    got = submission.top_p_filter(logits, 0.01)
    check_filter(got, logits, oracle(logits, top_p=0.01), "top_p_filter(log([0.2, 0.5, 0.3]), p=0.01)",
                 too_many_or_few(0.01))


@pytest.mark.concepts("top-p-sampling")
@pytest.mark.points(2)
def test_top_p_matches_transformers_warper(submission):
    ps = (0.3, 0.6, 0.9, 0.95)
    logits = margin_rows(6, 40, ps, seed=7)
    for p in ps:
        got = submission.top_p_filter(logits, p)
        check_filter(got, logits, oracle(logits, top_p=p), f"top_p_filter(logits [6, 40], p={p})",
                     too_many_or_few(p))


@pytest.mark.concepts("top-p-sampling")
@pytest.mark.points(1)
def test_top_p_range_of_p(submission):
    for p in (0.0, -0.5, 1.5):
        assert_value_error(submission, f"top_p_filter(logits, p={p})", "top_p_filter", randn(6, seed=8), p)
    logits = randn(3, 50, seed=9, scale=2.0)
    check_filter(submission.top_p_filter(logits, 1.0), logits, logits, "top_p_filter(logits [3, 50], p=1.0)",
                 too_many_or_few(1.0))


@pytest.mark.concepts("top-p-sampling", "top-k-and-top-p-together", "top-p-after-top-k-cuts-more")
@pytest.mark.points(1)
def test_top_p_on_logits_already_cut_by_top_k(submission):
    logits = oracle(margin_rows(4, 30, (0.7,), seed=10), top_k=8)        # 22 of 30 are -inf already
    got = submission.top_p_filter(logits, 0.7)
    check_filter(got, logits, oracle(logits, top_p=0.7), "top_p_filter(logits with -inf entries, p=0.7)",
                 too_many_or_few(0.7))


@pytest.mark.concepts("top-p-sampling")
@pytest.mark.points(1)
def test_top_p_any_batch_shape(submission):
    rows = margin_rows(6, 25, (0.75,), seed=11)
    for logits in (rows[0], rows.reshape(2, 3, 25)):
        got = submission.top_p_filter(logits, 0.75)
        check_filter(got, logits, oracle(logits, top_p=0.75), f"top_p_filter(logits {list(logits.shape)}, p=0.75)",
                     too_many_or_few(0.75))


# ------------------------------------------------------------------------------------------------ greedy_next_token

def check_greedy(submission, logits: torch.Tensor):
    call = f"greedy_next_token(logits {list(logits.shape)})"
    got = as_tensor(submission.greedy_next_token(logits), call)
    want = logits.argmax(dim=-1)
    assert tuple(got.shape) == tuple(want.shape), \
        f"{call} returned shape {list(got.shape)}; expected {list(want.shape)} (one token per row, last dim removed)"
    assert not got.is_floating_point(), f"{call} returned {got.dtype}; return token indices (torch.long)"
    assert torch.equal(got.long(), want), f"{call} did not return the index of the largest logit in each row"


@pytest.mark.concepts("greedy-decoding")
@pytest.mark.public
@pytest.mark.points(1)
def test_greedy_is_the_argmax_over_the_last_dim(submission):
    check_greedy(submission, randn(3, 10, seed=12))
    check_greedy(submission, randn(10, seed=13))


@pytest.mark.concepts("greedy-decoding")
@pytest.mark.points(1)
def test_greedy_any_batch_shape(submission):
    check_greedy(submission, randn(2, 3, 10, seed=14))


# ----------------------------------------------------------------------------------------------- no in-place changes

@pytest.mark.concepts("inference-parameters")
@pytest.mark.public
@pytest.mark.points(2)
def test_no_function_modifies_its_input(submission):
    logits = randn(4, 12, seed=15, scale=2.0)
    calls = [("apply_temperature", (logits, 2.0)), ("top_k_filter", (logits, 3)), ("top_p_filter", (logits, 0.5)),
             ("greedy_next_token", (logits,)),
             ("sample_next_token", (logits, 0.7, 5, 0.9, torch.Generator().manual_seed(0)))]
    for fn, args in calls:
        changed, outcome = submission.modified(fn, *args)
        assert not changed, f"{fn}() changed its logits in place; work on a copy (or use out-of-place operations " \
                            "such as masked_fill and /) so the caller's logits stay as they were"
        check_untouched_call_was_right(fn, args, outcome)


def check_untouched_call_was_right(fn: str, args: tuple, outcome) -> None:
    """Leaving the input alone pays only with a right result: code that returns zeros or its input scores 0."""
    from llmstudy.grader.submission import Raised
    if isinstance(outcome, Raised):
        raise AssertionError(outcome.describe(f"{fn}()"))
    got, logits = outcome.value, args[0]
    if fn == "apply_temperature":
        # float32 division on both sides: equal up to rounding.
        assert isinstance(got, torch.Tensor) and got.shape == logits.shape and \
            torch.allclose(got, oracle(logits, args[1]), atol=1e-5), f"apply_temperature(logits, {args[1]}) is wrong"
    elif fn == "top_k_filter":
        check_filter(got, logits, oracle(logits, top_k=args[1]), f"top_k_filter(logits, {args[1]})")
    elif fn == "top_p_filter":
        check_filter(got, logits, oracle(logits, top_p=args[1]), f"top_p_filter(logits, {args[1]})")
    elif fn == "greedy_next_token":
        assert isinstance(got, torch.Tensor) and torch.equal(got.long(), logits.argmax(-1)), \
            "greedy_next_token(logits) must return the argmax of each row"
    else:
        support = ~torch.isneginf(oracle(logits, args[1], args[2], args[3]))                 # [4, 12]
        assert isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(logits.shape[:-1]) and \
            bool(support.gather(-1, got.long().reshape(-1, 1).clamp(0, logits.shape[-1] - 1)).all()) and \
            bool(((got >= 0) & (got < logits.shape[-1])).all()), \
            "sample_next_token(logits, 0.7, 5, 0.9) drew a token outside the filtered support"


# ------------------------------------------------------------------------------------------------ sample_next_token

@pytest.mark.concepts("random-sampling")
@pytest.mark.public
@pytest.mark.points(2)
def test_sample_follows_the_softmax_distribution(submission):
    check_draws(submission, fixture_logits(), "sample_next_token(logits) with no filters", seed=16)


@pytest.mark.concepts("temperature-zero-in-this-kit", "low-temperature-and-greedy")
@pytest.mark.public
@pytest.mark.points(1)
def test_sample_temperature_zero_is_greedy(submission):
    logits = randn(5, 30, seed=17, scale=2.0)
    got = as_tensor(submission.sample_next_token(logits, 0.0, None, None, torch.Generator().manual_seed(0)),
                    "sample_next_token(logits, temperature=0)")
    assert tuple(got.shape) == (5,) and torch.equal(got.long(), logits.argmax(-1)), \
        "sample_next_token(logits, temperature=0) must return the greedy tokens (argmax of each row)"


@pytest.mark.concepts("temperature", "random-sampling")
@pytest.mark.points(1)
def test_sample_with_temperature(submission):
    check_draws(submission, fixture_logits(), "sample_next_token(logits, temperature=2.0)", temperature=2.0, seed=18)


@pytest.mark.concepts("top-k-sampling")
@pytest.mark.points(1)
def test_sample_top_k(submission):
    check_draws(submission, fixture_logits(), "sample_next_token(logits, top_k=4)", top_k=4, seed=19)


@pytest.mark.concepts("top-p-sampling")
@pytest.mark.points(1)
def test_sample_top_p(submission):
    check_draws(submission, fixture_logits(), "sample_next_token(logits, top_p=0.6)", top_p=0.6, seed=20)


@pytest.mark.concepts("temperature", "top-k-and-top-p-together")
@pytest.mark.points(2)
def test_sample_applies_temperature_before_top_p(submission):
    # Temperature reshapes the distribution first: at T=0.5 two tokens reach p=0.6, at T=2.0 four are needed
    # (cumulative 0.47, 0.73 and 0.20, 0.38, 0.52, 0.65), while the raw distribution needs three.
    for t in (0.5, 2.0):
        check_draws(submission, fixture_logits(), f"sample_next_token(logits, temperature={t}, top_p=0.6)",
                    temperature=t, top_p=0.6, seed=21)


@pytest.mark.concepts("top-k-and-top-p-together", "top-p-after-top-k-cuts-more")
@pytest.mark.points(1)
def test_sample_applies_top_k_before_top_p(submission):
    # top_k=3 renormalises to 0.44, 0.32, 0.24, so p=0.7 keeps 2; top-p first would keep 4, then top-k 3.
    check_draws(submission, fixture_logits(), "sample_next_token(logits, top_k=3, top_p=0.7)", top_k=3, top_p=0.7,
                seed=22)


@pytest.mark.concepts("softmax-output", "random-sampling")
@pytest.mark.points(1)
def test_sample_handles_large_logits(submission):
    # softmax ignores a constant shift; exp(1003) overflows unless the max is subtracted first.
    check_draws(submission, fixture_logits(offset=1000.0), "sample_next_token(logits + 1000)", seed=23,
                filtered=fixture_logits())


@pytest.mark.concepts("random-sampling")
@pytest.mark.points(1)
def test_sample_uses_the_generator(submission):
    logits = fixture_logits().expand(500, -1).contiguous()
    first = submission.sample_next_token(logits, 1.0, None, None, torch.Generator().manual_seed(24))
    again = submission.sample_next_token(logits, 1.0, None, None, torch.Generator().manual_seed(24))
    other = submission.sample_next_token(logits, 1.0, None, None, torch.Generator().manual_seed(25))
    for value in (first, again, other):
        as_tensor(value, "sample_next_token(logits, generator=...)")
    assert torch.equal(first, again), \
        "sample_next_token gave different tokens for two generators in the same state; draw with the " \
        "`generator` argument (e.g. torch.multinomial(..., generator=generator)), not the global random state"
    # Two different seeds agree on all 500 draws with probability < 0.3**500: that means the generator is ignored.
    assert not torch.equal(first, other), \
        "sample_next_token gave the same 500 tokens for two differently seeded generators; draw with `generator`"


@pytest.mark.concepts("random-sampling")
@pytest.mark.points(1)
def test_sample_output_shapes(submission):
    gen = torch.Generator().manual_seed(26)
    for shape, want in (((9,), ()), ((4, 9), (4,)), ((2, 3, 9), (2, 3))):
        logits = fixture_logits().expand(*shape).contiguous()
        call = f"sample_next_token(logits {list(shape)}, top_k=5)"
        got = as_tensor(submission.sample_next_token(logits, 1.0, 5, None, gen), call)
        assert tuple(got.shape) == want, \
            f"{call} returned shape {list(got.shape)}; expected {list(want)} (one token per row, last dim removed)"
        assert not got.is_floating_point(), f"{call} returned {got.dtype}; return token indices (torch.long)"
        # A shape is worth something only with real tokens: with top_k=1 every row must be the argmax (token 4).
        only = as_tensor(submission.sample_next_token(logits, 1.0, 1, None, gen), call.replace("5", "1"))
        assert tuple(only.shape) == want and bool((only == PERM[0]).all()), \
            f"{call.replace('5', '1')} must return the most probable token ({PERM[0]}) in every row"


@pytest.mark.concepts("top-k-sampling", "greedy-decoding")
@pytest.mark.points(1)
def test_sample_top_k_1_is_greedy(submission):
    logits = randn(6, 40, seed=27, scale=2.0)
    got = as_tensor(submission.sample_next_token(logits, 1.0, 1, None, torch.Generator().manual_seed(28)),
                    "sample_next_token(logits, top_k=1)")
    assert tuple(got.shape) == (6,) and torch.equal(got.long(), logits.argmax(-1)), \
        "sample_next_token(logits, top_k=1) must always return the most probable token"
