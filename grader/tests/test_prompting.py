"""Hidden graders for exercise 05: zero_shot_prompt, few_shot_prompt, fit_few_shot_prompt.

Oracles: the documented templates (solutions/prompting.py, stated exactly in the notebook) and real tokenizers:
SmolLM2's, which adds no special tokens, and all-MiniLM-L6-v2's BERT tokenizer, which adds [CLS] and [SEP], so a
budget that ignores special tokens or counts the parts of a prompt separately comes out wrong at the boundary.
Tokenizers can't cross to the learner's process by value: llmstudy.grader.checks.fit_few_shot_with_tokenizer loads the same
one there by name. Token counts are exact integers; no tolerance is involved.
"""
from __future__ import annotations

import functools
import json

import pytest

import llmstudy.solutions.prompting as ref
from llmstudy.catalog import EXERCISES_DIR


@functools.cache
def dialogues() -> list[dict]:
    return json.loads((EXERCISES_DIR / "data" / "dialogues.json").read_text(encoding="utf-8"))["dialogues"]


def pair(i: int) -> tuple[str, str]:
    d = dialogues()[i]
    return d["dialogue"], d["summary"]


def dialogue(i: int) -> str:
    return dialogues()[i]["dialogue"]


EXAMPLES = [pair(0), pair(1), pair(2)]

# The public tests' oracle: the templates exactly as exercises/05_prompting.ipynb states them, written out here so
# that a learner's self-check runs without solutions/ (tests/test_release.py checks that it agrees with solutions/).
INSTRUCTION, ANSWER_CUE, EXAMPLE_SEPARATOR = "Summarize the following conversation.", "Summary:", "\n\n\n"


def documented_prompt(examples, new_dialogue: str) -> str:
    """The notebook's formula: example(d, s) for each pair, then zero_shot_prompt(new_dialogue), by EXAMPLE_SEPARATOR."""
    parts = [INSTRUCTION + "\n\n" + d + "\n\n" + ANSWER_CUE + " " + s for d, s in examples]
    return EXAMPLE_SEPARATOR.join(parts + [INSTRUCTION + "\n\n" + new_dialogue + "\n\n" + ANSWER_CUE])


@functools.lru_cache(maxsize=4096)
def n_tokens(tokenizer_name: str, prompt: str) -> int:
    """Tokens of the assembled prompt as the model sees it, special tokens included. The tokenizer alone (no
    weights to load for it); memoised, since every grade counts the same reference prompts again (~75 a grade)."""
    from llmstudy import models
    return len(models.load_tokenizer(tokenizer_name)(prompt)["input_ids"])


def check_text(got, want: str, call: str) -> None:
    assert isinstance(got, str), f"{call} returned {type(got).__name__}; return a str"
    if got == want:
        return
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise AssertionError(f"{call} differs from the documented template at character {at}: expected "
                         f"{want[max(0, at - 10):at + 20]!r}, got {got[max(0, at - 10):at + 20]!r} "
                         f"(lengths {len(want)} expected, {len(got)} got)")


# -------------------------------------------------------------------------------------------------------- templates

@pytest.mark.concepts("zero-shot-inference", "answer-format-cue")
@pytest.mark.public
@pytest.mark.points(2)
def test_zero_shot_prompt_follows_the_template(submission):
    check_text(submission.zero_shot_prompt(dialogue(3)), documented_prompt([], dialogue(3)), "zero_shot_prompt(dialogue)")


@pytest.mark.concepts("one-shot-inference")
@pytest.mark.public
@pytest.mark.points(2)
def test_one_shot_prompt_has_exactly_one_solved_example(submission):
    call = "few_shot_prompt([(dialogue_1, summary_1)], dialogue)"
    got = submission.few_shot_prompt([pair(0)], dialogue(3))
    if isinstance(got, str):
        cues = got.count(ANSWER_CUE)
        assert cues == 2, f"{call} contains {cues} answer cues {ANSWER_CUE!r}; one-shot means one solved " \
                          "example plus the new dialogue, so 2"
    check_text(got, documented_prompt([pair(0)], dialogue(3)), call)


@pytest.mark.concepts("few-shot-inference")
@pytest.mark.public
@pytest.mark.points(2)
def test_few_shot_prompt_keeps_the_examples_in_order(submission):
    call = "few_shot_prompt([three (dialogue, summary) pairs], dialogue)"
    got = submission.few_shot_prompt(EXAMPLES, dialogue(3))
    if isinstance(got, str):
        where = [got.find(s) for _, s in EXAMPLES]
        assert -1 not in where, f"{call} is missing example summary {where.index(-1) + 1}"
        assert where == sorted(where), f"{call} puts the examples in another order than given; keep their order"
    check_text(got, documented_prompt(EXAMPLES, dialogue(3)), call)


@pytest.mark.concepts("few-shot-inference", "zero-shot-inference")
@pytest.mark.points(1)
def test_few_shot_prompt_without_examples_is_the_zero_shot_prompt(submission):
    check_text(submission.few_shot_prompt([], dialogue(4)), ref.zero_shot_prompt(dialogue(4)),
               "few_shot_prompt([], dialogue)")


# ----------------------------------------------------------------------------------------------- fitting the budget

def fit(submission, tokenizer_name: str, examples, new_dialogue: str, max_tokens: int, reserve: int | None = None):
    """The learner's fit_few_shot_prompt with a real tokenizer; returns (prompt, k) or the raised class names."""
    kwargs = {} if reserve is None else {"reserve_new_tokens": reserve}
    return submission.harness("fit_few_shot_with_tokenizer", tokenizer_name, examples, new_dialogue, max_tokens,
                              **kwargs)


def describe(tokenizer_name: str, max_tokens: int, reserve: int | None) -> str:
    extra = "" if reserve is None else f", reserve_new_tokens={reserve}"
    return f"fit_few_shot_prompt(examples, dialogue, <{tokenizer_name} tokenizer>, max_tokens={max_tokens}{extra})"


def check_fit(submission, tokenizer_name: str, examples, new_dialogue: str, max_tokens: int,
              reserve: int | None = None) -> None:
    """The learner's (prompt, k) must be the longest prefix that fits, counted on the assembled prompt."""
    call = describe(tokenizer_name, max_tokens, reserve)
    room = max_tokens - (reserve or 0)
    fits = [k for k in range(len(examples) + 1)
            if n_tokens(tokenizer_name, documented_prompt(examples[:k], new_dialogue)) <= room]
    want_k = max(fits)
    result = fit(submission, tokenizer_name, examples, new_dialogue, max_tokens, reserve)
    if "raised" in result:
        raised = f"{call} raised {result['raised'][0]}" + (f": {result['message']}" if result["message"] else "")
        fitting = "the zero-shot prompt fits" if want_k == 0 else f"{want_k} example(s) fit"
        raise AssertionError(raised + (f"; but {fitting} this budget" if "ValueError" in result["raised"] else ""))
    got = result["returned"]
    assert isinstance(got, (tuple, list)) and len(got) == 2, f"{call} must return a pair (prompt, k)"
    prompt, k = got
    assert isinstance(prompt, str) and type(k) is int, f"{call} must return (prompt: str, k: int)"
    assert 0 <= k <= len(examples), f"{call} returned k={k} for {len(examples)} examples"
    check_text(prompt, documented_prompt(examples[:k], new_dialogue),
               f"{call}: the returned prompt, which should be few_shot_prompt(examples[:{k}], dialogue),")
    used = n_tokens(tokenizer_name, prompt)
    assert used <= room, (f"{call} returned k={k}, but that prompt has {used} tokens as the tokenizer counts the "
                          f"whole prompt (special tokens included); with {reserve or 0} reserved for new tokens the "
                          f"budget leaves {room}")
    assert k == want_k, (f"{call} returned k={k}, but k={want_k} also fits: its prompt has "
                         f"{n_tokens(tokenizer_name, documented_prompt(examples[:want_k], new_dialogue))} tokens "
                         f"and {room} are left after the reserve; use the longest prefix that fits")


def budget(tokenizer_name: str, k: int, examples=None, new_dialogue: str | None = None) -> int:
    """Exact token count of the k-shot prompt: the budget at which it just fits."""
    examples = EXAMPLES if examples is None else examples
    return n_tokens(tokenizer_name, documented_prompt(examples[:k], new_dialogue or dialogue(3)))


@pytest.mark.concepts("context-window", "few-shot-limits")
@pytest.mark.public
@pytest.mark.points(1)
def test_fit_uses_every_example_when_the_budget_allows(submission):
    check_fit(submission, "smollm2", EXAMPLES, dialogue(3), 2048)


@pytest.mark.concepts("context-window")
@pytest.mark.public
@pytest.mark.points(2)
def test_fit_a_budget_equal_to_the_prompt_length_fits(submission):
    check_fit(submission, "smollm2", EXAMPLES, dialogue(3), budget("smollm2", 2))


@pytest.mark.concepts("context-window", "context-window-overflow")
@pytest.mark.public
@pytest.mark.points(1)
def test_fit_raises_value_error_when_zero_shot_does_not_fit(submission):
    max_tokens = budget("smollm2", 0) - 1
    call = describe("smollm2", max_tokens, None) + " (the zero-shot prompt alone is 1 token too long)"
    result = fit(submission, "smollm2", EXAMPLES, dialogue(3), max_tokens)
    assert "raised" in result, f"{call} returned instead of raising ValueError"
    assert "ValueError" in result["raised"], f"{call} raised {result['raised'][0]}; raise ValueError"
    # Points only for work done: raising counts once a budget that fits gets its prompt.
    check_fit(submission, "smollm2", EXAMPLES, dialogue(3), budget("smollm2", 1))


@pytest.mark.concepts("context-window", "few-shot-limits")
@pytest.mark.points(2)
def test_fit_one_token_short_drops_an_example(submission):
    check_fit(submission, "smollm2", EXAMPLES, dialogue(3), budget("smollm2", 2) - 1)


@pytest.mark.concepts("context-window", "max-new-tokens")
@pytest.mark.points(2)
def test_fit_reserves_room_for_new_tokens(submission):
    for max_tokens in (budget("smollm2", 2) + 50, budget("smollm2", 2) + 49):
        check_fit(submission, "smollm2", EXAMPLES, dialogue(3), max_tokens, reserve=50)


@pytest.mark.concepts("context-window", "token")
@pytest.mark.points(2)
def test_fit_counts_the_assembled_prompt_not_its_parts(submission):
    # SmolLM2's BPE merges across the joins: the parts, tokenized one by one, count fewer tokens than the whole.
    parts = [f"{ref.zero_shot_prompt(d)} {s}" for d, s in EXAMPLES[:1]] + [ref.zero_shot_prompt(dialogue(3))]
    if sum(n_tokens("smollm2", p) for p in parts) >= budget("smollm2", 1):
        raise RuntimeError("grader bug: this case must have fewer tokens in its parts than in the whole")
    check_fit(submission, "smollm2", EXAMPLES, dialogue(3), budget("smollm2", 1) - 1)


@pytest.mark.concepts("token", "tokenizer", "context-window")
@pytest.mark.points(2)
def test_fit_counts_special_tokens(submission):
    # all-MiniLM-L6-v2's tokenizer adds [CLS] and [SEP]: 2 tokens that a count without special tokens misses.
    if n_tokens("minilm", "a b") != 4:
        raise RuntimeError("grader bug: the MiniLM tokenizer should add 2 special tokens")
    for max_tokens in (budget("minilm", 1), budget("minilm", 1) - 1):
        check_fit(submission, "minilm", EXAMPLES, dialogue(3), max_tokens)


@pytest.mark.concepts("context-window", "max-new-tokens")
@pytest.mark.points(1)
def test_fit_raises_when_the_reserve_leaves_no_room(submission):
    max_tokens, reserve = budget("smollm2", 0) + 20, 21
    call = describe("smollm2", max_tokens, reserve) + " (the zero-shot prompt fits, but not with the reserve)"
    result = fit(submission, "smollm2", EXAMPLES, dialogue(3), max_tokens, reserve)
    assert "raised" in result, f"{call} returned instead of raising ValueError"
    assert "ValueError" in result["raised"], f"{call} raised {result['raised'][0]}; raise ValueError"
    # Points only for work done: raising counts once a budget that fits gets its prompt.
    check_fit(submission, "smollm2", EXAMPLES, dialogue(3), budget("smollm2", 1))


@pytest.mark.concepts("zero-shot-inference", "context-window")
@pytest.mark.points(1)
def test_fit_with_no_examples_gives_the_zero_shot_prompt(submission):
    check_fit(submission, "smollm2", [], dialogue(3), budget("smollm2", 0))


@pytest.mark.concepts("few-shot-inference", "context-window")
@pytest.mark.points(1)
def test_fit_uses_a_prefix_of_the_examples(submission):
    # The second example is long and the third short: the budget leaves room for the first and the third only;
    # the answer is still the prefix examples[:1], never a subset that skips one.
    examples = [pair(0), (dialogue(9) + "\n" + dialogue(10), pair(9)[1]), pair(2)]
    one, skip = budget("smollm2", 1, examples), n_tokens("smollm2", ref.few_shot_prompt([pair(0), pair(2)], dialogue(3)))
    if not (skip < budget("smollm2", 2, examples)):
        raise RuntimeError("grader bug: the skipping prompt should be shorter than the 2-shot prompt")
    check_fit(submission, "smollm2", examples, dialogue(3), max(one, skip))
