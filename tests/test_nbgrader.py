"""nbgrader integration, checked with the real nbgrader commands in a temporary course:

    llmstudy nbgrader init -> nbgrader generate_assignment -> notebooks in submitted/ ->
    llmstudy grade --nbgrader -> nbgrader export          (and, on a copy, plain nbgrader autograde)

The course holds one exercise, positional_encoding: it needs no model, so nbgrader's own kernels stay quick.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from llmstudy import cli
from llmstudy.grader import nbgrader as nbg
from llmstudy.grader.extract import extract, load_namespace
from llmstudy.grader.runner import grade
from llmstudy.grader.submission import InProcessSubmission
from llmstudy.grader.sandbox import isolation_problem
from llmstudy.catalog import EXERCISES, by_id

EXERCISE = by_id("positional_encoding")
ASSIGNMENT = "week1"

# A likely learner bug: sin on the first half of the dimensions and cos on the second instead of interleaved, and no
# input checks. Shape and dtype are right, so it earns some points but not all.
BUGGY = '''def positional_encoding(seq_len, d_model, base=10000.0):
    pos = torch.arange(seq_len, dtype=torch.float32)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float32)[None, :]
    angles = pos / base ** (2 * i / d_model)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
'''


def cells(nb, kind: str):
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get(kind)]


def read(path):
    return nbformat.read(path, as_version=4)


def body_after_docstring(fn: ast.FunctionDef) -> list[ast.stmt]:
    return fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body


def dump(statements: list[ast.stmt]) -> str:
    return ast.dump(ast.Module(body=statements, type_ignores=[]))


def functions_in(source: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A generated course and five students: correct, buggy, stub (the release as handed out), a corrupt file, and the
    instructor's own source notebook (the usual sanity check of a course)."""
    root = tmp_path_factory.mktemp("nbgrader") / "course"
    result = CliRunner().invoke(cli.main, ["nbgrader", "init", str(root), "--exercise", EXERCISE.id,
                                           "--assignment", ASSIGNMENT, "--course-id", "llm101"])
    assert result.exit_code == 0, result.output
    proc = nbg.run_nbgrader(root, "generate_assignment", ASSIGNMENT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    release = read(root / "release" / ASSIGNMENT / EXERCISE.notebook)
    source = read(root / "source" / ASSIGNMENT / EXERCISE.notebook)
    buggy = nbg.solved_notebook(release, source)
    cells(buggy, "solution")[0].source = BUGGY
    for student, nb in [("correct", nbg.solved_notebook(release, source)), ("buggy", buggy), ("stub", release),
                        ("corrupt", None), ("instructor", source)]:
        folder = root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        if nb is None:
            (folder / EXERCISE.notebook).write_text('{"cells": [', encoding="utf-8")
        else:
            nbformat.write(nb, folder / EXERCISE.notebook)
    # plain nbgrader autograde gets its own copy (its own gradebook), made before anything is graded
    shutil.copytree(root, root.parent / "plain")
    return root


def sandbox_flags() -> list[str]:
    # This file tests the gradebook, not the sandbox (tests/test_grade_adversarial.py does): where isolation is
    # unavailable, grade with the separate-process fallback instead of failing.
    return [] if isolation_problem() is None else ["--allow-unsandboxed"]


@pytest.fixture(scope="module")
def sandboxed(course):
    """`llmstudy grade --nbgrader` on the course, then `nbgrader export`: (results.json, {student: csv row})."""
    out = course.parent / "results.json"
    result = CliRunner().invoke(cli.main, ["grade", "--nbgrader", str(course), "--assignment", ASSIGNMENT,
                                           "--out", str(out), "--workers", "1", "--device", "cpu",
                                           *sandbox_flags()])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), export(course, "grades.csv")


def export(root, name: str) -> dict[str, dict]:
    proc = nbg.run_nbgrader(root, "export", "--to", name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(root / name, newline="") as f:
        return {row["student_id"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.id)
def test_source_notebook_is_valid_nbgrader_with_the_reference_in_solution_cells(exercise):
    from nbgrader.nbgraderformat import MetadataValidator

    nb = nbg.source_notebook(exercise)
    MetadataValidator().validate_nb(nb)          # nbgrader's own schema-3 validation; raises on bad metadata
    reference = functions_in(exercise.solution_path.read_text(encoding="utf-8"))
    found = {}
    for cell in cells(nb, "solution"):
        assert nbg.BEGIN_SOLUTION in cell.source and nbg.END_SOLUTION in cell.source
        found.update(functions_in(cell.source))  # the markers are comments: the cell parses as is
    for name in exercise.functions:
        # the reference body, preceded only by what it needs from the solution module (imports, helpers, constants)
        got, want = body_after_docstring(found[name]), body_after_docstring(reference[name])
        assert dump(got[len(got) - len(want):]) == dump(want), \
            f"{name}: the solution cell's body is not solutions/{exercise.id}.py's"
        support = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.Assign, ast.AnnAssign)
        assert all(isinstance(n, support) for n in got[:len(got) - len(want)])
    [graded] = cells(nb, "grade")
    assert graded.metadata.nbgrader.locked and graded.metadata.nbgrader.points == nbg.max_points(exercise)
    assert f"autograde_score({exercise.id!r}" in graded.source.split(nbg.BEGIN_HIDDEN)[1]


def test_generate_assignment_releases_stubs_and_hides_the_grading_code(course):
    release = read(course / "release" / ASSIGNMENT / EXERCISE.notebook)
    [stub] = cells(release, "solution")
    fn = functions_in(stub.source)["positional_encoding"]
    assert ast.unparse(fn.body[-1]) == "raise NotImplementedError()" and len(fn.body) == 2   # docstring + raise
    assert "BEGIN SOLUTION" not in stub.source and "torch.sin" not in stub.source
    [graded] = cells(release, "grade")
    assert "autograde_score" not in graded.source and "HIDDEN TESTS" not in graded.source
    assert "check(" in graded.source                                  # the learner's self-check stays visible
    namespace = load_namespace(course / "release" / ASSIGNMENT / EXERCISE.notebook)
    with pytest.raises(NotImplementedError):
        namespace["positional_encoding"](4, 8)


def test_grade_nbgrader_scores_appear_in_nbgrader_export(course, sandboxed):
    results, grades = sandboxed
    full = nbg.max_points(EXERCISE)
    assert {s: float(row["max_score"]) for s, row in grades.items()} == dict.fromkeys(grades, full)
    score = {s: float(row["score"]) for s, row in grades.items()}
    assert score["correct"] == full
    assert 0 < score["buggy"] < full
    assert score["stub"] == 0 and score["corrupt"] == 0
    # the source notebook's locked grade cell (whose hidden part imports grader.nbgrader) is not learner code
    assert score["instructor"] == full
    status = {s["student"]: s["exercises"][0]["status"] for s in results["submissions"]}
    assert status == {"correct": "graded", "buggy": "graded", "stub": "graded", "corrupt": "error",
                      "instructor": "graded"}
    # nbgrader can't read the corrupt notebook; its grade is still set (not left for manual grading in formgrader)
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "llm101") as gb:
        grade = gb.find_grade(nbg.grade_id(EXERCISE), EXERCISE.stem, ASSIGNMENT, "corrupt")
        assert grade.auto_score == 0 and not grade.needs_manual_grade
    # formgrader shows the autograded notebook: its grade cell carries the sandboxed report and the points
    autograded = read(course / "autograded" / "correct" / ASSIGNMENT / EXERCISE.notebook)
    [graded] = cells(autograded, "grade")
    assert "llmstudy (sandboxed)" in graded.outputs[0]["text"]
    assert float(graded.outputs[1]["data"]["text/plain"]) == full


def test_plain_nbgrader_autograde_runs_the_same_tests(course, sandboxed):
    """What the benchmark compares against: nbgrader executes the notebooks itself, and the grade cell's hidden part
    runs the same hidden tests in its kernel, so it must give the same points as the sandbox."""
    plain = course.parent / "plain"
    # One kernel (~20 s: torch, the public and the hidden tests) is enough: the buggy notebook's partial credit
    # can only match the sandbox's if the hidden tests ran and nothing (e.g. stderr output) zeroed the cell.
    proc = nbg.run_nbgrader(plain, "autograde", ASSIGNMENT, "--force", "--student", "buggy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    grades = export(plain, "grades.csv")
    _, sandboxed_grades = sandboxed
    assert 0 < float(grades["buggy"]["score"]) == float(sandboxed_grades["buggy"]["score"])


def test_locked_grade_cells_are_not_learner_code(course):
    source = course / "source" / ASSIGNMENT / EXERCISE.notebook
    [graded] = cells(read(source), "grade")
    assert "from llmstudy.grader.nbgrader import autograde_score" in graded.source
    assert "llmstudy.grader.nbgrader" not in extract(source) and "positional_encoding" in extract(source)
    result = grade(EXERCISE.id, InProcessSubmission(load_namespace(source), EXERCISE.id))
    assert result.score == result.max_score > 0, [t.message for t in result.tests if not t.passed]


def test_venv_nbgrader_works_without_activating_the_venv(course, tmp_path):
    """`.venv/bin/nbgrader generate_assignment` from a shell whose PATH lacks the venv (nbgrader runs `alembic`
    from PATH; the course's nbgrader_config.py puts the venv's bin folder first)."""
    copy = tmp_path / "course"
    shutil.copytree(course, copy)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    assert shutil.which("alembic", path=env["PATH"]) is None     # else this test could not fail
    proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", ASSIGNMENT,
                           "--force"], cwd=copy, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_grade_nbgrader_says_what_to_fix(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli.main, ["grade", "--nbgrader", str(tmp_path), "--assignment", ASSIGNMENT])
    assert result.exit_code == 1 and "not an nbgrader course" in result.output and "Traceback" not in result.output

    result = runner.invoke(cli.main, ["nbgrader", "init", str(tmp_path / "c"), "--exercise", EXERCISE.id])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.main, ["grade", "--nbgrader", str(tmp_path / "c")])
    assert result.exit_code == 1 and "--assignment" in result.output
    result = runner.invoke(cli.main, ["grade", "--nbgrader", str(tmp_path / "c"), "--assignment", ASSIGNMENT])
    assert result.exit_code == 1 and "nbgrader generate_assignment week1" in result.output


def test_init_refuses_to_overwrite_without_force(tmp_path):
    runner = CliRunner()
    args = ["nbgrader", "init", str(tmp_path), "--exercise", EXERCISE.id]
    assert runner.invoke(cli.main, args).exit_code == 0
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 1 and "--force" in result.output
    assert runner.invoke(cli.main, args + ["--force"]).exit_code == 0


def test_partial_credit_is_rescaled_to_the_grade_cell():
    assert nbg.cell_points(6, 12, 12) == 6
    assert nbg.cell_points(6, 12, 24) == 12       # graders changed after init: same fraction of the cell's points
    assert nbg.cell_points(15, 12, 12) == 12      # never above the cell: nbgrader rejects that
    assert nbg.cell_points(0, 0, 12) == 0
