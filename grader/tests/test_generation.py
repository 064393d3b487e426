"""Hidden graders for exercise 04: generate(model, input_ids, max_new_tokens, eos_token_id, temperature, top_k,
top_p, generator), the autoregressive generation loop.

Oracles: SmolLM2-135M-Instruct's own transformers generate(do_sample=False) for greedy decoding and eos handling,
token for token; for sampling, the model's logits on the learner's output (every drawn token must lie in the
filtered support), a chi-square test of first-token frequencies, and reproducibility given the generator.
The learner's loop runs beside the real model, passed by name (llmstudy.grader.checks.generate_with_model, one thread).
Never requires the learner's random draws to equal anyone else's.
"""
from __future__ import annotations

import functools
import weakref

import pytest
import torch

from llmstudy.grader.codec import ModelRef
from llmstudy.grader.reference_cache import per_machine

SMOLLM2 = ModelRef("smollm2")

# Greedy tokens are compared exactly. The learner's logits come from another computation path (no KV cache, other
# shapes) and differ from generate()'s by up to ~1e-4 on one thread, by CPU (measured worst 1e-5 on an AMD EPYC,
# 9.6e-5 on an Intel Xeon: tests/test_model_proxy.py). Two logits that each move by d can swap only if their margin
# is below 2d, so every compared step must have a top-2 margin above 1e-3, 5x the 2e-4 that takes (checked below on
# the reference's own logits; a case that fails it is a grader bug, not the learner's).
MIN_MARGIN = 1e-3
# Support checks: a token within this distance (in tempered logits / probability mass) of a top-k or top-p boundary
# is accepted, for the same differences between the learner's logits and the ones recomputed here. At the lowest
# temperature a support test uses (0.5) 1e-4 of logit noise is 2e-4 of tempered logit, and a softmax mass moves by
# at most twice that (4e-4); 1e-3 leaves 2.5x on top. Mutants that sample outside the support (tests/) land far
# outside it.
SUPPORT_TOL = 1e-3
# Frequency test: fail only when the chi-square p-value is below this; a correct sampler fails with about this
# probability for an unlucky seed, and seeds are fixed, so a given implementation always gets the same answer.
MIN_P_VALUE = 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The reference runs on one thread, as the learner's loop does (see llmstudy.grader.checks.generate_with_model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def smollm2():
    from llmstudy import models
    return models.load("smollm2", "cpu")


def encode(*prompts: str) -> torch.Tensor:
    """LongTensor [B, L]; the prompts of one batch must have the same length (the API has no attention mask)."""
    return _encoded(prompts).clone()


@functools.cache
def _encoded(prompts: tuple[str, ...]) -> torch.Tensor:
    """Once per process: a grade asks for the same few prompts' ids ~60 times (~20 ms of tokenizing)."""
    tokenizer = smollm2()[1]
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    if len({len(r) for r in rows}) != 1:
        raise RuntimeError(f"grader bug: prompts of one batch have different lengths {[len(r) for r in rows]}")
    return torch.tensor(rows, dtype=torch.long)


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # pytest session (one grade) -> {key: result}


def once_per_grade(request, key: str, run):
    """run() once per grade (pytest session) and share its result, or its exception, between tests: the runner's
    `submission` fixture is per test, and each call of the learner's loop costs about a second."""
    results = _SHARED.setdefault(request.session, {})
    if key not in results:
        try:
            results[key] = (True, run())
        except Exception as exc:  # noqa: BLE001 - re-raised below, in every test that uses this run
            results[key] = (False, exc)
    ok, value = results[key]
    if not ok:
        raise value
    return value


def show(token_id: int) -> str:
    return f"{token_id} ({smollm2()[1].decode([token_id])!r})"


@functools.cache
@per_machine
def _reference(prompts: tuple[str, ...], max_new_tokens: int, eos_token_id: int | None) -> torch.Tensor:
    model, _ = smollm2()
    ids = encode(*prompts)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                             output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:]                                   # [B, n]
    top2 = torch.stack(out.logits, dim=1).topk(2, dim=-1).values           # [B, n, 2]
    margin = top2[..., 0] - top2[..., 1]                                    # [B, n]
    live = torch.ones_like(new, dtype=torch.bool)                           # the row had not finished before step t
    if eos_token_id is not None:
        live[:, 1:] = (new[:, :-1] == eos_token_id).cumsum(dim=1) == 0
    if bool((margin[live] <= MIN_MARGIN).any()):
        raise RuntimeError(f"grader bug: the case {prompts} has a top-2 logit margin of "
                           f"{margin[live].min().item():.2g} <= {MIN_MARGIN}; choose another prompt")
    return out.sequences


def reference(prompts: tuple[str, ...], max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
    """transformers' generate(do_sample=False), finished rows padded with eos: LongTensor [B, L + n]."""
    return _reference(prompts, max_new_tokens, eos_token_id).clone()


def learner_generate(submission, prompts: tuple[str, ...], max_new_tokens: int, call: str, **kwargs) -> torch.Tensor:
    """The learner's generate() on SmolLM2, checked for type, dtype, shape and the kept prompt."""
    ids = encode(*prompts)
    out = submission.harness("generate_with_model", SMOLLM2, ids, max_new_tokens, **kwargs)
    assert isinstance(out, torch.Tensor), f"{call} returned {type(out).__name__}; return a LongTensor [B, L + n]"
    assert out.dtype == torch.long, f"{call} returned dtype {out.dtype}; token ids are torch.long (int64)"
    assert out.dim() == 2 and out.shape[0] == ids.shape[0], \
        f"{call} returned shape {list(out.shape)} for input_ids of shape {list(ids.shape)}; expected [B, L + n]"
    new = out.shape[1] - ids.shape[1]
    assert new <= max_new_tokens, \
        f"{call} produced {new} new tokens; max_new_tokens was {max_new_tokens}"
    assert new >= 0 and torch.equal(out[:, :ids.shape[1]], ids), \
        f"{call}: the output must start with input_ids unchanged, then the new tokens"
    return out


def check_same_tokens(got: torch.Tensor, want: torch.Tensor, prompt_len: int, call: str,
                      eos_token_id: int | None = None) -> None:
    """got and want are [B, L + n]; the new tokens must be the same, and as many. Messages name the likely bug."""
    n_got, n_want = got.shape[1] - prompt_len, want.shape[1] - prompt_len
    new_got, new_want = got[:, prompt_len:], want[:, prompt_len:]

    def first_eos(row: torch.Tensor) -> int | None:
        hits = (row == eos_token_id).nonzero().flatten().tolist() if eos_token_id is not None else []
        return hits[0] if hits else None

    for row in range(want.shape[0]):
        for t in range(min(n_got, n_want)):
            g, w = int(new_got[row, t]), int(new_want[row, t])
            if g == w:
                continue
            ended = first_eos(new_want[row])
            if ended is not None and ended < t:
                raise AssertionError(f"{call}: row {row} produced eos at new token {ended}, but new token {t} is "
                                     f"{show(g)}; a finished row is padded with eos_token_id ({eos_token_id}) "
                                     "while the other rows go on")
            raise AssertionError(f"{call}: row {row}, new token {t} is {show(g)} where transformers' generate("
                                 f"do_sample=False) gives {show(w)}; predict from the logits at the last position, "
                                 "take the argmax over the vocabulary, and append it")
    if eos_token_id is not None and n_got < n_want:
        for row in range(want.shape[0]):
            if first_eos(new_got[row]) is None and first_eos(new_want[row]) == n_got:
                raise AssertionError(f"{call}: row {row} stopped before writing the eos token ({eos_token_id}) the "
                                     "model produced; a row that produces eos_token_id keeps it")
        for row in range(want.shape[0]):
            if first_eos(new_got[row]) is None:
                raise AssertionError(f"{call} stopped after {n_got} new tokens, but row {row} had not produced "
                                     "eos_token_id; generation stops only once every row has produced it")
    if eos_token_id is not None and n_got > n_want and all(first_eos(r) is not None for r in new_want):
        raise AssertionError(f"{call} produced {n_got} new tokens, but every row had produced eos_token_id after "
                             f"{n_want}; stop as soon as all rows are finished")
    assert n_got == n_want, (f"{call} produced {n_got} new tokens per row where transformers' generate() produces "
                             f"{n_want} for this prompt")


def may_draw(logits: torch.Tensor, token: int, temperature: float, top_k: int | None, top_p: float | None) -> bool:
    """Whether a correct sampler could draw `token` from logits [V]: temperature, then top-k, then top-p (the order
    of transformers' generate()); tokens within SUPPORT_TOL of a boundary count as inside."""
    x = logits.double() / temperature                                       # [V]
    above = x > x[token] + SUPPORT_TOL                                      # tokens certainly more probable
    if top_k is not None and int(above.sum()) >= top_k:
        return False
    if top_p is not None:
        if top_k is not None:                                               # top-p sees the top-k survivors only
            x = x.masked_fill(x < torch.topk(x, top_k).values[-1] - SUPPORT_TOL, float("-inf"))
        probs = x.softmax(dim=-1)
        if float(probs[above].sum()) >= top_p + SUPPORT_TOL:
            return False
    return True


def model_logits(submission, ids: torch.Tensor) -> torch.Tensor:
    """SmolLM2's logits [B, L, V] for ids, computed in this process by the submission's model server: the learner's
    own calls already filled its prefix cache with these positions, so checking them costs no forward pass.
    Cached and from-scratch logits differ by up to ~1e-4, inside SUPPORT_TOL (tests/test_model_proxy.py)."""
    return submission.server.logits("smollm2", ids)


def check_in_support(submission, out: torch.Tensor, prompt_len: int, call: str, temperature: float, top_k=None,
                     top_p=None):
    """Every new token of `out` [B, L + n] must be drawable from the model's filtered distribution at its step."""
    logits = model_logits(submission, out[:, :-1])[:, prompt_len - 1:]      # [B, n, V]: what each step saw
    for row in range(out.shape[0]):
        for t in range(out.shape[1] - prompt_len):
            token = int(out[row, prompt_len + t])
            if not may_draw(logits[row, t], token, temperature, top_k, top_p):
                x = logits[row, t].double() / temperature
                rank = int((x > x[token]).sum()) + 1
                mass = float(x.softmax(-1)[x > x[token]].sum())
                raise AssertionError(
                    f"{call}: row {row}, new token {t} is {show(token)}, the model's rank-{rank} token (the more "
                    f"probable ones hold {mass:.2f} of the tempered probability); it lies outside the filtered "
                    "support. Apply temperature, then top-k, then top-p, and sample from what remains")


# --------------------------------------------------------------------------------------------------- greedy decoding

CAPITAL = ("The capital of France is",)
PAIR = ("I opened the door and saw", "A cat is an animal that")


GREEDY_CALL = "generate(model, input_ids, max_new_tokens=6) (greedy)"


@pytest.fixture
def greedy_capital(submission, request) -> torch.Tensor:
    """The learner's greedy run on CAPITAL, shared by two tests (each call of the learner's loop costs ~1 s)."""
    return once_per_grade(request, "greedy_capital", lambda: learner_generate(submission, CAPITAL, 6, GREEDY_CALL))


@pytest.mark.concepts("autoregressive-generation", "completion")
@pytest.mark.public
@pytest.mark.points(1)
def test_returns_prompt_followed_by_new_tokens(greedy_capital):
    # learner_generate checked type, dtype, shape and the kept prompt; here: something was generated at all.
    assert greedy_capital.shape[1] > encode(*CAPITAL).shape[1], f"{GREEDY_CALL} added no tokens"


@pytest.mark.concepts("greedy-decoding", "autoregressive-generation")
@pytest.mark.public
@pytest.mark.points(3)
def test_greedy_matches_transformers_generate(greedy_capital):
    check_same_tokens(greedy_capital, reference(CAPITAL, 6), encode(*CAPITAL).shape[1], GREEDY_CALL)


@pytest.mark.concepts("max-new-tokens")
@pytest.mark.public
@pytest.mark.points(1)
def test_never_more_than_max_new_tokens(submission):
    for n in (1, 3):
        call = f"generate(model, input_ids, max_new_tokens={n})"
        out = learner_generate(submission, CAPITAL, n, call)
        got = out.shape[1] - encode(*CAPITAL).shape[1]
        assert got == n, f"{call} produced {got} new tokens; without eos_token_id it should produce exactly {n}"


@pytest.mark.concepts("stop-token")
@pytest.mark.public
@pytest.mark.points(2)
def test_stops_at_eos_and_keeps_it(submission):
    free = reference(CAPITAL, 8)
    eos = int(free[0, encode(*CAPITAL).shape[1] + 1])          # the model's second new token (" Paris" then ".")
    want = reference(CAPITAL, 8, eos)
    call = f"generate(model, input_ids, max_new_tokens=8, eos_token_id={eos})"
    got = learner_generate(submission, CAPITAL, 8, call, eos_token_id=eos)
    check_same_tokens(got, want, encode(*CAPITAL).shape[1], call, eos)


@pytest.mark.concepts("greedy-decoding", "autoregressive-generation")
@pytest.mark.points(2)
def test_greedy_batch_of_two_matches_transformers_generate(submission):
    call = "generate(model, input_ids, max_new_tokens=6) with a batch of 2 prompts (greedy)"
    check_same_tokens(learner_generate(submission, PAIR, 6, call), reference(PAIR, 6), encode(*PAIR).shape[1], call)


def eos_finishing(prompts: tuple[str, ...], steps: int, row: int, step: int) -> tuple[int, list[int]]:
    """An eos id that the free-running greedy model produces first at `step` in `row`, and the step at which each
    row first produces it (steps if never): lets a test end one row early for real."""
    L = encode(*prompts).shape[1]
    free = reference(prompts, steps)[:, L:]                                 # [B, steps]
    eos = int(free[row, step])
    first = [next((t for t in range(steps) if int(free[r, t]) == eos), steps) for r in range(free.shape[0])]
    return eos, first


@pytest.fixture
def pair_until_eos(submission, request) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """One run serves two tests: "." ends row 0 of PAIR at step 2 (padded with eos from then on) and row 1 at step 5,
    before max_new_tokens=8; its first steps are the greedy PAIR run's, already in the prefix cache."""
    eos, first = eos_finishing(PAIR, 8, row=0, step=2)
    if not (first[0] == 2 and 2 < first[1] < 7):
        raise RuntimeError(f"grader bug: eos {eos} should end row 0 at step 2 and row 1 later; got {first}")
    want = reference(PAIR, 8, eos)
    if want.shape[1] - encode(*PAIR).shape[1] != max(first) + 1:
        raise RuntimeError("grader bug: transformers' generate() should stop once both rows have produced eos")
    call = f"generate(model, input_ids, max_new_tokens=8, eos_token_id={eos}) with a batch of 2"
    got = once_per_grade(request, "pair_until_eos",
                         lambda: learner_generate(submission, PAIR, 8, call, eos_token_id=eos))
    return got, want, eos, call


@pytest.mark.concepts("stop-token")
@pytest.mark.points(2)
def test_finished_row_is_padded_with_eos(pair_until_eos):
    got, want, eos, call = pair_until_eos
    check_same_tokens(got, want, encode(*PAIR).shape[1], call, eos)


@pytest.mark.concepts("stop-token")
@pytest.mark.points(2)
def test_stops_early_once_every_row_finished(pair_until_eos):
    got, want, eos, call = pair_until_eos
    assert got.shape[1] <= want.shape[1], f"{call} produced {got.shape[1] - encode(*PAIR).shape[1]} new tokens, but every row " \
                            f"had produced eos_token_id after {want.shape[1] - encode(*PAIR).shape[1]}; stop as " \
                            "soon as all rows are finished"
    check_same_tokens(got, want, encode(*PAIR).shape[1], call, eos)


# ---------------------------------------------------------------------------------------------------------- sampling

SAMPLED = PAIR     # its prompt logits are in the prefix cache already


def sample(submission, prompts, max_new_tokens: int, seed: int, **kwargs) -> tuple[torch.Tensor, str]:
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    call = f"generate(model, input_ids, max_new_tokens={max_new_tokens}, {settings}, generator=<seed {seed}>)"
    generator = torch.Generator().manual_seed(seed)
    out = learner_generate(submission, prompts, max_new_tokens, call, generator=generator, **kwargs)
    # Points only for work done: without eos_token_id every row gets exactly max_new_tokens tokens, so a support or
    # reproducibility check never passes on zero new tokens.
    got = out.shape[1] - encode(*prompts).shape[1]
    assert got == max_new_tokens, f"{call} produced {got} new tokens; without eos_token_id it should produce " \
                                  f"exactly {max_new_tokens}"
    return out, call


@pytest.mark.concepts("top-k-sampling", "random-sampling")
@pytest.mark.public
@pytest.mark.points(2)
def test_sampled_tokens_lie_in_the_top_k_support(submission):
    out, call = sample(submission, SAMPLED, 2, seed=0, temperature=1.0, top_k=5)
    check_in_support(submission, out, encode(*SAMPLED).shape[1], call, 1.0, top_k=5)


@pytest.mark.concepts("top-k-sampling", "temperature")
@pytest.mark.points(2)
def test_sampled_tokens_respect_top_k_at_high_temperature(submission):
    out, call = sample(submission, SAMPLED, 2, seed=1, temperature=1.5, top_k=3)
    check_in_support(submission, out, encode(*SAMPLED).shape[1], call, 1.5, top_k=3)


@pytest.mark.concepts("top-p-sampling", "top-k-and-top-p-together", "temperature")
@pytest.mark.points(2)
def test_sampled_tokens_respect_temperature_then_top_p(submission):
    # T < 1 sharpens the distribution before top-p, so the correct nucleus is smaller than the untempered one.
    out, call = sample(submission, SAMPLED, 2, seed=2, temperature=0.6, top_p=0.5)
    check_in_support(submission, out, encode(*SAMPLED).shape[1], call, 0.6, top_p=0.5)


@functools.cache
@per_machine
def _argmax_probability(prompt: tuple[str, ...], steps: int, temperature: float) -> float:
    """The probability that a correct sampler at `temperature` draws the greedy tokens (once per process)."""
    want = reference(prompt, steps)
    with torch.no_grad():
        logits = smollm2()[0](want).logits[0, encode(*prompt).shape[1] - 1:-1]    # [steps, V]
    return float((logits.double() / temperature).softmax(-1).max(-1).values.prod())


@pytest.mark.concepts("low-temperature-and-greedy")
@pytest.mark.points(1)
def test_near_zero_temperature_samples_the_argmax(submission):
    # CAPITAL: the greedy run above already put these positions in the submission's prefix cache.
    prompt, temperature = CAPITAL, 0.01
    if _argmax_probability(prompt, 4, temperature) < 1 - 1e-6:
        raise RuntimeError("grader bug: at this temperature a correct sampler might not pick the argmax")
    out, call = sample(submission, prompt, 4, seed=4, temperature=temperature)
    check_same_tokens(out, reference(prompt, 4), encode(*prompt).shape[1],
                      call + f" (at temperature {temperature} the argmax has probability > 0.999999)")


SHORT = ("He bought a",)


@pytest.fixture
def seeded_samples(submission, request) -> dict:
    """The learner's plain random sampling (temperature 1, no filter) with seeds 6, 6 again, 7 and 8."""
    def run():
        runs = {}
        for key, seed in (("6", 6), ("6 again", 6), ("7", 7), ("8", 8)):
            runs[key], runs["call"] = sample(submission, SHORT, 2, seed=seed, temperature=1.0)
        return runs
    return once_per_grade(request, "seeded_samples", run)


@pytest.mark.concepts("random-sampling")
@pytest.mark.points(1)
def test_sampling_is_reproducible_with_the_generator(seeded_samples):
    assert torch.equal(seeded_samples["6"], seeded_samples["6 again"]), \
        (f"{seeded_samples['call']} gave different tokens for two generators with the same seed; draw with "
         "generator=generator")


@pytest.mark.concepts("random-sampling")
@pytest.mark.points(1)
def test_different_seeds_give_different_samples(seeded_samples):
    # At temperature 1 over SmolLM2's whole vocabulary, three seeds agreeing on both tokens is practically impossible
    # (tests/ checks that the reference's three draws differ).
    distinct = {tuple(seeded_samples[k][0].tolist()) for k in ("6", "7", "8")}
    assert len(distinct) > 1, ("generate(..., temperature=1.0, generator=<seed 6, 7, 8>) gave the same tokens for "
                               "three different seeds; draw from the distribution with the generator you are given")


@pytest.mark.concepts("random-sampling", "top-k-sampling")
@pytest.mark.points(2)
def test_first_token_frequencies_follow_the_filtered_softmax(submission):
    prompt, rows, temperature, top_k = "He bought a", 128, 0.5, 4
    ids = encode(prompt)
    with torch.no_grad():
        logits = model_logits(submission, ids)[0, -1].double() / temperature  # [V]
    top = torch.topk(logits, top_k)
    if float(top.values[-1] - torch.topk(logits, top_k + 1).values[-1]) <= SUPPORT_TOL:
        raise RuntimeError("grader bug: the k-th and (k+1)-th logits of this case are too close to tell apart")
    expected = top.values.softmax(-1) * rows                                # expected counts of the top-k tokens
    out, call = sample(submission, (prompt,) * rows, 1, seed=9, temperature=temperature, top_k=top_k)
    check_in_support(submission, out[:1], ids.shape[1], call, temperature, top_k=top_k)
    drawn = out[:, -1]
    counts = torch.stack([(drawn == t).sum() for t in top.indices]).double()
    outside = rows - int(counts.sum())
    assert outside == 0, f"{call}: {outside} of {rows} rows drew a token outside the top {top_k}"
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    p_value = float(torch.special.gammaincc(torch.tensor((top_k - 1) / 2), torch.tensor(chi2 / 2)))
    got = ", ".join(f"{show(int(t))}: {int(c)}" for t, c in zip(top.indices, counts))
    assert p_value >= MIN_P_VALUE, \
        (f"{call} over {rows} identical rows drew first tokens {{{got}}}, far from softmax(logits / temperature) "
         f"over the top {top_k} (chi-square p = {p_value:.1g}); divide the logits by temperature, keep the top k, "
         "then sample from the softmax")

