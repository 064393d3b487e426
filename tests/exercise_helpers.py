"""What the exercise test files share: grade a namespace in-process, and describe the outcome."""
from __future__ import annotations

import importlib

import pytest

from llmstudy.grader.runner import ExerciseResult, grade
from llmstudy.grader.submission import InProcessSubmission


def run(exercise: str, namespace: dict, public_only: bool = False) -> ExerciseResult:
    return grade(exercise, InProcessSubmission(namespace, exercise), public_only=public_only)


def failures(result: ExerciseResult) -> str:
    return "; ".join(f"{t.name}: {t.message}" for t in result.tests if not t.passed)


def reference_namespace(exercise: str) -> dict:
    module = importlib.import_module(f"llmstudy.solutions.{exercise}")
    return {k: v for k, v in vars(module).items() if not k.startswith("__")}


def params(table: dict[str, dict[str, dict]]):
    """pytest params (exercise, name, namespace) from {exercise: {name: namespace}}, with readable ids."""
    return [pytest.param(ex, name, ns, id=f"{ex}/{name}") for ex, named in table.items() for name, ns in named.items()]


def verdict(result: ExerciseResult) -> tuple:
    return result.score, tuple((t.name, t.passed, t.message) for t in result.tests)
