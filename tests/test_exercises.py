"""Every exercise in llmstudy/catalog.py: its reference scores full marks, its notebook's stubs score 0, the stubs
have the reference's signatures, grading runs nothing but definitions from the notebook, and every notebook cell
runs with the reference in place of the stubs.

Mutants, alternatives and determinism live beside each exercise's own test file (test_exercises_*.py)."""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import io
import re

import pytest

from exercise_helpers import failures, params, reference_namespace, run
from mutants.trivial import TRIVIAL
from llmstudy.grader.extract import extract, load_namespace
from llmstudy.catalog import EXERCISES

IDS = [ex.id for ex in EXERCISES]
BY_ID = {ex.id: ex for ex in EXERCISES}

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def reference_result(exercise: str):
    return run(exercise, reference_namespace(exercise))


def test_every_exercise_has_its_files():
    for ex in EXERCISES:
        for path in (ex.notebook_path, ex.solution_path, ex.grader_path):
            assert path.exists(), f"{ex.id}: {path} is missing"


@pytest.mark.parametrize("exercise", IDS)
def test_reference_scores_full_marks(exercise):
    result = reference_result(exercise)
    assert result.max_score > 0 and result.score == result.max_score, failures(result)


@pytest.mark.parametrize("exercise", IDS)
def test_public_tests_are_a_proper_subset_with_the_same_points(exercise):
    everything = {t.name: t.max_score for t in reference_result(exercise).tests}
    public = run(exercise, reference_namespace(exercise), public_only=True)
    assert public.score == public.max_score, failures(public)
    assert public.tests and {t.name for t in public.tests} < set(everything)
    assert all(everything[t.name] == t.max_score for t in public.tests)


@pytest.mark.parametrize("exercise", IDS)
def test_notebook_stubs_score_zero(exercise):
    namespace = load_namespace(BY_ID[exercise].notebook_path)
    for fn in BY_ID[exercise].functions:
        assert callable(namespace.get(fn)), f"the notebook does not define {fn}()"
    result = run(exercise, namespace)
    assert result.score == 0 and result.max_score > 0, [t.name for t in result.tests if t.passed]
    assert all("NotImplementedError" in t.message for t in result.tests), failures(result)


@pytest.mark.parametrize("exercise, name, namespace", params(TRIVIAL))
def test_code_that_computes_nothing_scores_zero(exercise, name, namespace):
    """Points only for work done: a property test (inputs unchanged, shapes, support, reproducibility, input checks)
    pays only when the result is also right, so zeros, echoed input, empty strings and always-raising code get 0."""
    result = run(exercise, reference_namespace(exercise) | namespace)
    assert result.score == 0, [t.name for t in result.tests if t.passed]


@pytest.mark.parametrize("exercise", IDS)
def test_notebook_signatures_match_the_reference(exercise):
    namespace = load_namespace(BY_ID[exercise].notebook_path)
    reference = importlib.import_module(f"llmstudy.solutions.{exercise}")
    for fn in BY_ID[exercise].functions:
        stub, ref = inspect.signature(namespace[fn]), inspect.signature(getattr(reference, fn))
        assert [(p.name, p.default) for p in stub.parameters.values()] == \
               [(p.name, p.default) for p in ref.parameters.values()], fn
        assert inspect.getdoc(namespace[fn]), f"the stub of {fn} has no docstring"


@pytest.mark.parametrize("exercise", IDS)
def test_grading_runs_no_experiment(exercise):
    """What grading executes from the notebook is imports, defs and literal constants: no model load, no file read
    (the sandbox has no exercises/ folder), no experiment."""
    for node in ast.parse(extract(BY_ID[exercise].notebook_path)).body:
        assert isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)) or \
            isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.unparse(node)[:200]


def notebook_cells(exercise: str) -> list[str]:
    import nbformat

    notebook = nbformat.read(BY_ID[exercise].notebook_path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("exercise", IDS)
def test_notebook_runs_with_the_reference(exercise, smollm2, minilm):
    """Every code cell runs, in order, with the stubs replaced by the reference: self-check all PASS, plots drawn."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    reference = importlib.import_module(f"llmstudy.solutions.{exercise}")
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in notebook_cells(exercise):
            exec(compile(source, f"<{exercise} notebook>", "exec"), namespace)  # noqa: S102 - our own notebook
            if "raise NotImplementedError" in source:            # a stub cell: swap in the reference
                for fn in re.findall(r"^def (\w+)\(", source, flags=re.M):
                    namespace[fn] = getattr(reference, fn)
    printed = out.getvalue()
    figures = len(plt.get_fignums())
    plt.close("all")
    assert "FAIL" not in printed and re.search(rf"{exercise}: (\d+)/\1 points", printed), printed
    assert figures >= 1, "the closing experiment drew no figure"
