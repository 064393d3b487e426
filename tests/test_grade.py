"""The batch grader's bookkeeping and outputs (no learner code runs here), and `llmstudy check`."""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from grader import batch, report
from llmstudy.exercises import by_id

ADVERSARIAL = Path(__file__).parent / "adversarial"


def points_in_source(exercise_id: str) -> float:
    """An independent count of a grader file's points: its @pytest.mark.points(n) decorators, read by AST."""
    tree = ast.parse(by_id(exercise_id).grader_path.read_text())
    total = 0.0
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            marks = [d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("points")]
            total += float(marks[0].args[0].value) if marks else 1.0
    return total


def test_max_score_counts_the_points_markers():
    assert batch.exercise_max_score("positional_encoding") == points_in_source("positional_encoding") > 0


def test_find_submissions_prefers_the_notebook_and_marks_missing(tmp_path):
    (tmp_path / "ana").mkdir()
    (tmp_path / "ana" / "01_positional_encoding.py").write_text("x = 1\n")
    (tmp_path / "ana" / "01_positional_encoding.ipynb").write_text("{}")
    (tmp_path / "ana" / "notes.txt").write_text("ignored")
    (tmp_path / "bo").mkdir()
    (tmp_path / "stray.txt").write_text("not a student")
    entries = batch.find_submissions(tmp_path, (by_id("positional_encoding"),))
    assert entries == [("ana", "positional_encoding", tmp_path / "ana" / "01_positional_encoding.ipynb"),
                       ("bo", "positional_encoding", None)]


def test_missing_files_get_a_record_without_starting_workers(monkeypatch):
    monkeypatch.setattr(batch, "sandbox_mode", lambda allow, warn=print: True)
    results = batch.grade_entries([("ana", "positional_encoding", None), ("bo", "positional_encoding", None)],
                                  progress=False, device="cpu")
    max_score = points_in_source("positional_encoding")
    assert results["max_score"] == max_score
    assert [s["student"] for s in results["submissions"]] == ["ana", "bo"]
    ex = results["submissions"][0]["exercises"][0]
    assert ex == {"exercise": "positional_encoding", "file": "", "status": "missing", "score": 0.0,
                  "max_score": max_score, "message": "no 01_positional_encoding.ipynb or 01_positional_encoding.py "
                                                     "was submitted", "tests": []}


def test_a_file_that_is_too_big_is_an_error_before_any_code_runs(tmp_path, monkeypatch):
    path = tmp_path / "01_positional_encoding.py"
    path.write_text("x = 1\n")
    monkeypatch.setattr(batch, "MAX_FILE_BYTES", 3)
    record = batch.grade_task(batch.Task(0, "ana", "positional_encoding", str(path), 12.0))
    assert record["status"] == "error" and "clear the notebook's outputs" in record["message"]


@pytest.fixture
def results():
    """A hand-made graded batch with hostile strings in names and messages."""
    test = {"name": "test_shape", "passed": False, "score": 0.0, "max_score": 1.0,
            "message": "<script>alert('x')</script> & more"}
    ok = {"name": "test_formula", "passed": True, "score": 2.0, "max_score": 2.0, "message": ""}
    return {"max_score": 6.0, "submissions": [
        {"student": "<b>eve</b>", "score": 2.0, "max_score": 6.0, "exercises": [
            {"exercise": "positional_encoding", "file": "01_positional_encoding.py", "status": "graded",
             "score": 2.0, "max_score": 3.0, "message": "1/2 tests passed", "tests": [test, ok]},
            {"exercise": "attention", "file": "", "status": "missing", "score": 0.0, "max_score": 3.0,
             "message": "no 02_attention.ipynb or 02_attention.py was submitted", "tests": []}]},
        {"student": "../ana", "score": 3.0, "max_score": 6.0, "exercises": [
            {"exercise": "positional_encoding", "file": "01_positional_encoding.ipynb", "status": "graded",
             "score": 3.0, "max_score": 3.0, "message": "2/2 tests passed", "tests": [ok]},
            {"exercise": "attention", "file": "02_attention.py", "status": "error", "score": 0.0, "max_score": 3.0,
             "message": "syntax error in 02_attention.py, line 3: expected ':'", "tests": []}]}]}


def test_csv_has_one_row_per_student_and_a_total(results, tmp_path):
    report.write_csv(results, tmp_path / "g.csv")
    rows = list(csv.reader((tmp_path / "g.csv").open()))
    assert rows == [["student", "positional_encoding", "attention", "total"],
                    ["<b>eve</b>", "2", "0", "2"], ["../ana", "3", "0", "3"]]


def test_gradescope_results_follow_the_documented_format(results, tmp_path):
    written = report.write_gradescope(results, tmp_path / "gs")
    assert sorted(p.parent.name for p in written) == ["_ana", "_b_eve__b_"]   # no path escapes the folder
    assert all(p.resolve().is_relative_to((tmp_path / "gs").resolve()) for p in written)
    data = json.loads((tmp_path / "gs" / "_b_eve__b_" / "results.json").read_text())
    assert data["score"] == 2.0
    assert {"name", "score", "max_score", "status", "output"} <= set(data["tests"][0])
    assert [t["status"] for t in data["tests"]] == ["failed", "passed", "failed"]
    assert sum(t["max_score"] for t in data["tests"]) == 6.0


def test_feedback_html_escapes_everything_and_shows_no_test_code(results, tmp_path):
    written = report.write_feedback(results, tmp_path / "fb")
    page = (tmp_path / "fb" / "_b_eve__b_.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>eve</b>" not in page and "&lt;b&gt;eve&lt;/b&gt;" in page
    assert "test_shape" in page and "failed" in page
    assert "def test_" not in page and "assert " not in page
    assert len(written) == 2


def test_summary_table_counts_statuses(results):
    from rich.console import Console
    console = Console(width=120, record=True)
    console.print(report.summary_table(results))
    text = console.export_text()
    assert "positional_encoding" in text and "attention" in text and "2.50 / 3" in text


def test_check_passes_a_correct_notebook_and_fails_a_stub(tmp_path):
    from cli import main
    runner = CliRunner()
    good = runner.invoke(main, ["check", str(ADVERSARIAL / "correct" / "01_positional_encoding.ipynb")])
    assert good.exit_code == 0, good.output
    assert "PASS" in good.output and "FAIL" not in good.output
    bad = runner.invoke(main, ["check", str(ADVERSARIAL / "stub" / "01_positional_encoding.py")])
    assert bad.exit_code == 1 and "FAIL" in bad.output and "NotImplementedError" in bad.output


def test_check_show_code_prints_only_what_grading_runs():
    from cli import main
    run = CliRunner().invoke(main, ["check", "--show-code", str(ADVERSARIAL / "shell_escape" /
                                                                 "01_positional_encoding.ipynb")])
    assert run.exit_code == 0
    assert "def positional_encoding" in run.output and "import os" in run.output
    assert "touch" not in run.output and "system" not in run.output


def test_check_reports_a_broken_file_in_one_line():
    from cli import main
    run = CliRunner().invoke(main, ["check", str(ADVERSARIAL / "corrupt_notebook" / "01_positional_encoding.ipynb")])
    assert run.exit_code == 1 and "not a readable notebook" in run.output and "Traceback" not in run.output


def test_pool_returns_results_and_exceptions_as_values():
    import math

    from grader.pool import LocalPool
    with LocalPool(workers=2) as pool:
        got = dict(pool.imap_unordered(math.sqrt, [4.0, 9.0, -1.0]))
    assert got[4.0] == 2.0 and got[9.0] == 3.0
    assert isinstance(got[-1.0], ValueError)


def test_pool_retries_an_item_whose_worker_died_then_gives_up():
    import os

    from grader.pool import LocalPool, WorkerLost
    with LocalPool(workers=1, retries=1) as pool:
        (item, result), = list(pool.imap_unordered(os._exit, [3]))    # the worker exits on every try
    assert item == 3 and isinstance(result, WorkerLost)
