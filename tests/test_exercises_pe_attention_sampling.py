"""Exercises 01-03 (positional_encoding, attention, sampling): the graders themselves are under test.

Every mutant (one plausible bug) loses points, every correct alternative scores full marks, and a verdict is the same
20 times in a row. What holds for every exercise (references, stubs, notebooks) is in test_exercises.py.
"""
from __future__ import annotations

import functools

import pytest

from exercise_helpers import failures, params, reference_namespace, run
from mutants.pe_attention_sampling import ALTERNATIVES, MUTANTS

EXERCISES = ("positional_encoding", "attention", "sampling")

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def reference_result(exercise: str):
    return run(exercise, reference_namespace(exercise))


def test_every_exercise_has_8_mutants_and_2_alternatives():
    for exercise in EXERCISES:
        assert len(MUTANTS[exercise]) >= 8 and len(ALTERNATIVES[exercise]) >= 2, exercise


@pytest.mark.parametrize("exercise, name, namespace", params(MUTANTS))
def test_mutant_loses_points(exercise, name, namespace):
    result = run(exercise, namespace)
    assert result.score < result.max_score, f"mutant {name} scored full marks"
    failed = [t for t in result.tests if not t.passed]
    assert all(t.message.strip() for t in failed), "every failed test must tell the learner why"
    # Inside this pytest session the graders' asserts would be rewritten (showing source) unless they opt out.
    assert not any("+  where" in t.message or "\nassert " in t.message for t in failed), failures(result)


@pytest.mark.parametrize("exercise, name, namespace", params(ALTERNATIVES))
def test_alternative_scores_full_marks(exercise, name, namespace):
    result = run(exercise, namespace)
    assert result.score == result.max_score, failures(result)


# One submission per exercise that fails some tests, so that messages and a statistical verdict are compared too.
DETERMINISM = {"positional_encoding": "base-ignored", "attention": "mha-ignores-mask",
               "sampling": "temperature-applied-after-top-p"}


@pytest.mark.parametrize("exercise", EXERCISES)
def test_same_verdict_20_times_in_a_row(exercise):
    namespace = MUTANTS[exercise][DETERMINISM[exercise]]
    verdicts = set()
    for _ in range(20):
        result = run(exercise, namespace)
        verdicts.add((result.score, tuple((t.name, t.passed, t.message) for t in result.tests)))
    assert len(verdicts) == 1
    (score, _), = verdicts
    assert 0 < score < reference_result(exercise).max_score


def test_minilm_is_restored_after_the_learner_crashes(minilm):
    """The MiniLM check patches the grader's own (shared) model; a crash in the learner's code mid-forward must leave
    every layer as it was."""
    import torch

    model, tokenizer = minilm
    batch = tokenizer(["Attention is all you need."], return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).last_hidden_state

    def crashing(*args, **kwargs):
        raise RuntimeError("learner bug")

    result = run("attention", reference_namespace("attention") | {"multi_head_attention": crashing})
    minilm_test = next(t for t in result.tests if "minilm" in t.name)
    assert not minilm_test.passed and "RuntimeError" in minilm_test.message
    assert all("forward" not in layer.attention.__dict__ for layer in model.encoder.layer)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, before)
