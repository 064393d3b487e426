"""Grades feed memory: which deck concepts a learner's failed tests point to.

Every hidden and public test in grader/tests/ names the concepts it exercises with `@pytest.mark.concepts("id", ...)`
(ids of cards/concepts). The grader copies them into each test's record in results.json (`concepts`); for a
results.json written before that, `marked_concepts()` reads the markers from the grader test files themselves, by
parsing them (no import: the graders import torch and the models).
`llmstudy review --from-results results.json --student NAME` then brings those cards forward (cards.store).
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path


class GradesError(ValueError):
    """results.json can't be used as asked; the message says what to do."""


def marked_concepts(tests_dir: Path | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    """(exercise id, test function name) -> concept ids, from the @pytest.mark.concepts decorators in
    grader/tests/test_<exercise>.py."""
    from llmstudy.catalog import EXERCISES, GRADER_TESTS_DIR
    directory = Path(tests_dir) if tests_dir is not None else GRADER_TESTS_DIR
    out = {}
    for ex in EXERCISES:
        path = directory / f"test_{ex.id}.py"
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                ids = [arg.value for deco in node.decorator_list if _is_concepts_marker(deco)
                       for arg in deco.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
                out[(ex.id, node.name)] = tuple(ids)
    return out


def _is_concepts_marker(deco) -> bool:
    """`@pytest.mark.concepts(...)`"""
    return (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr == "concepts"
            and isinstance(deco.func.value, ast.Attribute) and deco.func.value.attr == "mark")


@dataclass(frozen=True)
class Failure:
    exercise: str
    test: str            # the test's name, "" for an exercise that did not run at all
    concepts: tuple[str, ...]


def load_results(path: Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GradesError(f"--from-results: {path} does not exist; give the results.json `llmstudy grade` wrote") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GradesError(f"--from-results: {path} is not JSON ({err}); give the results.json `llmstudy grade` "
                          f"wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("submissions"), list):
        raise GradesError(f"--from-results: {path} has no 'submissions' list; is it the results.json of "
                          f"`llmstudy grade`?")
    return data


def failures(results: dict, student: str) -> list[Failure]:
    """The failed tests of `student` and the concepts each points to. An exercise that did not run (error, missing)
    points to every concept its tests name."""
    students = [s.get("student") for s in results["submissions"] if isinstance(s, dict)]
    matches = [s for s in results["submissions"] if isinstance(s, dict) and s.get("student") == student]
    if not matches:
        raise GradesError(f"--student: no student '{student}' in the results; they hold "
                          f"{', '.join(map(str, students)) or 'no students'}")
    marked = None
    out = []
    for exercise in matches[0].get("exercises", []):
        ex_id = exercise.get("exercise", "")
        tests = exercise.get("tests") or []
        if not tests and exercise.get("status", "graded") != "graded":
            marked = marked if marked is not None else marked_concepts()
            ids = sorted({c for (e, _), cs in marked.items() if e == ex_id for c in cs})
            out.append(Failure(ex_id, "", tuple(ids)))
            continue
        for test in tests:
            if test.get("passed", True):
                continue
            name = test.get("name", "")
            ids = test.get("concepts")
            if ids is None:           # a results.json from before the grader recorded concepts
                marked = marked if marked is not None else marked_concepts()
                ids = marked.get((ex_id, name.split("[")[0]), ())
            out.append(Failure(ex_id, name, tuple(ids)))
    return out


def concepts_of(failed: list[Failure]) -> list[str]:
    """The distinct concept ids of these failures, in first-seen order."""
    return list(dict.fromkeys(c for f in failed for c in f.concepts))
