"""Exercises 04-05 (generation, prompting): the graders themselves are under test.

The reference solutions score full marks, the notebooks' stubs score 0, every mutant (one plausible bug) loses
points, every correct alternative scores full marks, a verdict is the same 20 times in a row, the grader's own
sampling oracle agrees with transformers' warpers, and the notebooks' code runs with the reference functions in
place of the stubs.

Cost: a full generation grade runs the learner's loop ~20 times on SmolLM2 (about 10 s on one thread). So a mutant
is first graded on the public tests, a subset of the full grade with the same points: points lost there are lost in
the full grade too; only mutants that pass every public test get the full grade. The 20 repetitions for generation
run on the public tests (greedy, eos and sampling-support checks), plus 2 full grades that must agree with them.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import re

import pytest

from grader.extract import extract, load_namespace
from grader.runner import grade
from grader.submission import InProcessSubmission
from llmstudy.exercises import by_id
from mutants.generation_prompting import ALTERNATIVES, MUTANTS, REFERENCES

EXERCISES = ("generation", "prompting")

pytestmark = pytest.mark.usefixtures("one_thread")


def run(exercise: str, namespace: dict, public_only: bool = False):
    return grade(exercise, InProcessSubmission(namespace, exercise), public_only=public_only)


def failures(result) -> str:
    return "; ".join(f"{t.name}: {t.message}" for t in result.tests if not t.passed)


def reference_namespace(exercise: str) -> dict:
    return {k: v for k, v in vars(REFERENCES[exercise]).items() if not k.startswith("__")}


def params(table: dict[str, dict[str, dict]]):
    return [pytest.param(ex, name, ns, id=f"{ex}/{name}") for ex, named in table.items() for name, ns in named.items()]


def verdict(result) -> tuple:
    return result.score, tuple((t.name, t.passed, t.message) for t in result.tests)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_reference_scores_full_marks_and_public_tests_are_a_proper_subset(exercise):
    result = run(exercise, reference_namespace(exercise))
    assert result.max_score > 0 and result.score == result.max_score, failures(result)
    public = run(exercise, reference_namespace(exercise), public_only=True)
    assert public.score == public.max_score, failures(public)
    everything = {t.name: t.max_score for t in result.tests}
    assert public.tests and {t.name for t in public.tests} < set(everything)
    assert all(everything[t.name] == t.max_score for t in public.tests)      # the same points in both


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


def test_notebook_states_the_reference_templates():
    """The graders compare strings with solutions/prompting.py; the notebook gives learners the same constants."""
    namespace = load_namespace(by_id("prompting").notebook_path)
    for name in ("INSTRUCTION", "ANSWER_CUE", "EXAMPLE_SEPARATOR"):
        assert namespace[name] == getattr(REFERENCES["prompting"], name), name


@pytest.mark.parametrize("exercise", EXERCISES)
def test_grading_runs_no_experiment(exercise):
    """What grading executes from the notebook is imports, defs and literal constants: no model load, no file read
    (the sandbox has no exercises/ folder), no experiment."""
    import ast

    for node in ast.parse(extract(by_id(exercise).notebook_path)).body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)) or \
            isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.unparse(node)[:200]


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

    from grader.codec import ModelRef

    sub = InProcessSubmission(reference_namespace("generation"), "generation")
    ids = smollm2[1](list(grader_module("generation").SHORT), return_tensors="pt").input_ids
    outs = {tuple(sub.harness("generate_with_model", ModelRef("smollm2"), ids, 3, temperature=1.0,
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


def test_generate_with_model_restores_the_model_after_a_crash(smollm2):
    model, _ = smollm2

    def crashing(*args, **kwargs):
        raise RuntimeError("learner bug")

    result = run("generation", reference_namespace("generation") | {"generate": crashing}, public_only=True)
    assert result.score == 0 and all("RuntimeError" in t.message for t in result.tests)
    assert "generate" not in vars(model)


def test_calling_model_generate_is_refused():
    result = run("generation", MUTANTS["generation"]["calls-model-generate"], public_only=True)
    assert result.score == 0 and all("model.generate() was called" in t.message for t in result.tests), \
        failures(result)


def notebook_cells(exercise: str) -> list[str]:
    import nbformat

    notebook = nbformat.read(by_id(exercise).notebook_path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("exercise", EXERCISES)
def test_notebook_runs_with_the_reference(exercise, smollm2):
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
