"""Exercises 04-05 (generation, prompting): the graders themselves are under test.

Every mutant (one plausible bug) loses points, every correct alternative scores full marks, a verdict is the same
20 times in a row, and the grader's own sampling oracle agrees with transformers' warpers. What holds for every
exercise (references, stubs, notebooks) is in test_exercises.py.

Cost: a full generation grade runs the learner's loop ~20 times on SmolLM2 (about 10 s on one thread). So a mutant
is first graded on the public tests, a subset of the full grade with the same points: points lost there are lost in
the full grade too; only mutants that pass every public test get the full grade. The 20 repetitions for generation
run on the public tests (greedy, eos and sampling-support checks), plus 2 full grades that must agree with them.
"""
from __future__ import annotations

import pytest

from exercise_helpers import failures, params, reference_namespace, run, verdict
from llmstudy.grader.extract import load_namespace
from llmstudy.grader.submission import InProcessSubmission
from llmstudy.catalog import by_id
from mutants.generation_prompting import ALTERNATIVES, MUTANTS, REFERENCES

EXERCISES = ("generation", "prompting")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_notebook_states_the_reference_templates():
    """The graders compare strings with solutions/prompting.py; the notebook gives learners the same constants."""
    namespace = load_namespace(by_id("prompting").notebook_path)
    for name in ("INSTRUCTION", "ANSWER_CUE", "EXAMPLE_SEPARATOR"):
        assert namespace[name] == getattr(REFERENCES["prompting"], name), name


def test_every_exercise_has_8_mutants_and_2_alternatives():
    for exercise in EXERCISES:
        assert len(MUTANTS[exercise]) >= 8 and len(ALTERNATIVES[exercise]) >= 2, exercise


@pytest.mark.parametrize("exercise, name, namespace", params(MUTANTS))
def test_mutant_loses_points(exercise, name, namespace):
    result = run(exercise, namespace, public_only=True)       # public tests carry the same points as in full
    if result.score == result.max_score:
        result = run(exercise, namespace)
    assert result.score < result.max_score, f"mutant {name} scored full marks"
    failed = [t for t in result.tests if not t.passed]
    assert all(t.message.strip() for t in failed), "every failed test must tell the learner why"


@pytest.mark.parametrize("exercise, name, namespace", params(ALTERNATIVES))
def test_alternative_scores_full_marks(exercise, name, namespace):
    result = run(exercise, namespace)
    assert result.score == result.max_score, failures(result)


# Submissions that fail some tests, so that messages are compared too. The generation mutant passes the greedy and
# eos tests (exact token comparisons) and fails sampling ones (support and chi-square checks, messages with tokens).
DETERMINISM = {"prompting": ["counts-the-parts", "budget-ignores-special-tokens"], "generation": ["ignores-top-k"]}


@pytest.mark.parametrize("name", DETERMINISM["prompting"])
def test_prompting_same_verdict_20_times_in_a_row(name):
    verdicts = {verdict(run("prompting", MUTANTS["prompting"][name])) for _ in range(20)}
    assert len(verdicts) == 1
    (score, _), = verdicts
    assert 0 < score < run("prompting", reference_namespace("prompting")).max_score


@pytest.mark.parametrize("name", DETERMINISM["generation"])
def test_generation_same_verdict_20_times_in_a_row(name):
    namespace = MUTANTS["generation"][name]
    public = {verdict(run("generation", namespace, public_only=True)) for _ in range(20)}
    full = [run("generation", namespace) for _ in range(2)]
    assert len(public) == 1 and len({verdict(r) for r in full}) == 1
    (score, tests), = public
    assert score < full[0].max_score and full[0].score < full[0].max_score
    assert set(tests) <= set(verdict(full[0])[1])                 # the public verdicts recur in the full grade


def grader_module(exercise: str):
    """grader/tests/test_<id>.py as a module of its own, to test its helpers directly."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_grader_of_{exercise}", by_id(exercise).grader_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_draws_differ_across_seeds(smollm2):
    """test_different_seeds_give_different_samples assumes three seeds practically never agree: check that the
    reference's own draws differ in the call the grader makes."""
    import torch

    from llmstudy.grader.codec import ModelRef

    sub = InProcessSubmission(reference_namespace("generation"), "generation")
    ids = smollm2[1](list(grader_module("generation").SHORT), return_tensors="pt").input_ids
    outs = {tuple(sub.harness("generate_with_model", ModelRef("smollm2"), ids, 2, temperature=1.0,
                              generator=torch.Generator().manual_seed(seed))[0].tolist()) for seed in (6, 7, 8)}
    assert len(outs) == 3


def test_may_draw_accepts_exactly_the_transformers_warper_support(smollm2):
    """The grader's support oracle (with its 1e-4 tolerance) against transformers' own warpers on real logits: it
    accepts every token the warpers keep and rejects the others (none of these lies within 1e-4 of a boundary)."""
    import torch
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    may_draw = grader_module("generation").may_draw
    model, tokenizer = smollm2
    ids = tokenizer("Once upon a time, there was a", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    for temperature, top_k, top_p in ((1.0, 5, None), (0.6, None, 0.5), (1.2, 8, 0.7), (1.5, 3, None)):
        x = TemperatureLogitsWarper(temperature)(ids, logits[None].clone())
        if top_k is not None:
            x = TopKLogitsWarper(top_k)(ids, x)
        if top_p is not None:
            x = TopPLogitsWarper(top_p)(ids, x)
        kept = set(torch.nonzero(~torch.isinf(x[0])).flatten().tolist())
        for token in torch.topk(logits, 60).indices.tolist():
            assert may_draw(logits, token, temperature, top_k, top_p) == (token in kept), \
                (temperature, top_k, top_p, token)


def test_the_learner_gets_a_proxy_and_the_real_model_is_untouched(smollm2):
    model, _ = smollm2
    seen = []

    def crashing(model, *args, **kwargs):
        seen.append(type(model).__name__)
        raise RuntimeError("learner bug")

    result = run("generation", reference_namespace("generation") | {"generate": crashing}, public_only=True)
    assert result.score == 0 and all("RuntimeError" in t.message for t in result.tests)
    assert set(seen) == {"ModelProxy"} and "generate" not in vars(model)


@pytest.mark.parametrize("shortcut", ["calls-model-generate", "calls-class-generate", "calls-generation-mixin"])
def test_library_decoding_does_not_exist_for_the_learner(shortcut):
    """model.generate(), type(model).generate(model, ...) and GenerationMixin.generate(model, ...): the proxy has no
    route to the library's decoding, so a shortcut scores what an empty loop scores: 0."""
    result = run("generation", MUTANTS["generation"][shortcut])
    assert result.score == 0, failures(result)
    assert all("generate" in t.message or "not available" in t.message or "has no attribute" in t.message
               for t in result.tests if not t.passed), failures(result)
