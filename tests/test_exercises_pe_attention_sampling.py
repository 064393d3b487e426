"""Exercises 01-03 (positional_encoding, attention, sampling): the graders themselves are under test.

The reference solutions score full marks, the notebooks' stubs score 0, every mutant (one plausible bug) loses
points, every correct alternative scores full marks, a verdict is the same 20 times in a row, and the notebooks'
code runs with the reference functions in place of the stubs.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import re

import pytest

from grader.extract import load_namespace
from grader.runner import grade
from grader.submission import InProcessSubmission
from llmstudy.exercises import by_id
from mutants.pe_attention_sampling import ALTERNATIVES, MUTANTS, REFERENCES

EXERCISES = ("positional_encoding", "attention", "sampling")

pytestmark = pytest.mark.usefixtures("one_thread")


def run(exercise: str, namespace: dict, public_only: bool = False):
    return grade(exercise, InProcessSubmission(namespace, exercise), public_only=public_only)


def failures(result) -> str:
    return "; ".join(f"{t.name}: {t.message}" for t in result.tests if not t.passed)


def reference_namespace(exercise: str) -> dict:
    return {k: v for k, v in vars(REFERENCES[exercise]).items() if not k.startswith("__")}


def params(table: dict[str, dict[str, dict]]):
    return [pytest.param(ex, name, ns, id=f"{ex}/{name}") for ex, named in table.items() for name, ns in named.items()]


@functools.cache
def reference_result(exercise: str):
    return run(exercise, reference_namespace(exercise))


@pytest.mark.parametrize("exercise", EXERCISES)
def test_reference_scores_full_marks(exercise):
    result = reference_result(exercise)
    assert result.max_score > 0 and result.score == result.max_score, failures(result)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_public_tests_are_a_proper_subset(exercise):
    everything = {t.name for t in reference_result(exercise).tests}
    public = {t.name for t in run(exercise, reference_namespace(exercise), public_only=True).tests}
    assert public and public < everything


@pytest.mark.parametrize("exercise", EXERCISES)
def test_notebook_stubs_score_zero(exercise):
    namespace = load_namespace(by_id(exercise).notebook_path)
    for fn in by_id(exercise).functions:
        assert callable(namespace.get(fn)), f"the notebook does not define {fn}()"
    result = run(exercise, namespace)
    assert result.score == 0 and result.max_score > 0, [t.name for t in result.tests if t.passed]
    assert all("NotImplementedError" in t.message for t in result.tests), failures(result)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_notebook_signatures_match_the_reference(exercise):
    namespace = load_namespace(by_id(exercise).notebook_path)
    for fn in by_id(exercise).functions:
        stub, ref = inspect.signature(namespace[fn]), inspect.signature(getattr(REFERENCES[exercise], fn))
        assert [(p.name, p.default) for p in stub.parameters.values()] == \
               [(p.name, p.default) for p in ref.parameters.values()], fn
        assert inspect.getdoc(namespace[fn]), f"the stub of {fn} has no docstring"


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


def notebook_cells(exercise: str) -> list[str]:
    import nbformat

    notebook = nbformat.read(by_id(exercise).notebook_path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_notebook_runs_with_the_reference(exercise, smollm2, minilm):
    """Every code cell runs, in order, with the stubs replaced by the reference: self-check all PASS, plots drawn."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in notebook_cells(exercise):
            exec(compile(source, f"<{exercise} notebook>", "exec"), namespace)  # noqa: S102 - our own notebook
            if "raise NotImplementedError" in source:            # a stub cell: swap in the reference
                for fn in re.findall(r"^def (\w+)\(", source, flags=re.M):
                    namespace[fn] = getattr(REFERENCES[exercise], fn)
    printed = out.getvalue()
    figures = len(plt.get_fignums())
    plt.close("all")
    assert "FAIL" not in printed and re.search(rf"{exercise}: (\d+)/\1 points", printed), printed
    assert figures >= 1, "the closing experiment drew no figure"

