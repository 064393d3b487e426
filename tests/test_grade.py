"""The batch grader's bookkeeping, the typed results and the reports written from them (no learner code
runs here), and `llmstudy check`."""
from __future__ import annotations

import ast
import re
import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmstudy.grader import batch, report
from llmstudy.grader.results import ClassResult, ExerciseResult, StudentResult, TestResult
from llmstudy.catalog import by_id

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
    assert results.max_score == max_score
    assert [s.student for s in results.submissions] == ["ana", "bo"]
    ex = results.submissions[0].exercises[0]
    assert ex == ExerciseResult("positional_encoding", "", "missing", 0.0, max_score,
                                "no 01_positional_encoding.ipynb or 01_positional_encoding.py was submitted")


def test_a_file_that_is_too_big_is_an_error_before_any_code_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "sandbox_mode", lambda allow, warn=print: True)
    (tmp_path / "ana").mkdir()
    (tmp_path / "ana" / "01_positional_encoding.py").write_text("x = 1\n")
    monkeypatch.setattr(batch, "MAX_FILE_BYTES", 3)
    results = batch.grade_entries([("ana", "positional_encoding", tmp_path / "ana" / "01_positional_encoding.py")],
                                  progress=False, device="cpu")       # no cluster starts: nothing to grade
    (record,) = results.submissions[0].exercises
    assert record.status == "error" and "clear the notebook's outputs" in record.message


def test_resume_keeps_journalled_records_and_grades_only_new_or_changed_files(tmp_path, monkeypatch):
    """The journal decides what --resume grades: a record for the same bytes is kept, a changed file is graded."""
    monkeypatch.setattr(batch, "sandbox_mode", lambda allow, warn=print: True)
    files = {}
    for student in ("ana", "bo", "cy"):
        (tmp_path / student).mkdir()
        files[student] = tmp_path / student / "01_positional_encoding.py"
        files[student].write_text(f"# {student}\n")
    entries = [(s, "positional_encoding", f) for s, f in files.items()]
    graded = []

    def fake_run(client, tasks):
        for i, (task, _) in tasks.items():
            graded.append(task.student)
            points = batch.exercise_max_score(task.exercise)        # as a worker counts them
            yield i, ExerciseResult(task.exercise, task.filename, "graded", 1.0, points, task.student)

    monkeypatch.setattr(batch, "_Starting", NoCluster)
    monkeypatch.setattr(batch, "_run", fake_run)
    journal = tmp_path / "out" / "results.journal.jsonl"
    first = batch.grade_entries(entries, progress=False, journal=journal)
    assert sorted(graded) == ["ana", "bo", "cy"]
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])   # killed while writing the last record
    files["bo"].write_text("# bo, resubmitted\n")
    graded.clear()
    again = batch.grade_entries(entries, progress=False, journal=journal, resume=True)
    assert sorted(graded) == sorted(["bo", entries[-1][0]])          # changed, and the torn line's
    assert again == first
    with pytest.raises(batch.JournalMismatch, match="other options"):
        batch.grade_entries(entries, progress=False, journal=journal, resume=True, timeout=3.0)


class NoCluster:
    """Stands in for the Dask cluster (batch._Starting) where a test replaces batch._run."""
    note = None                      # nothing to say: no warm cluster was tried

    def __init__(self, *args):
        pass

    def client(self):
        return None

    def close(self):
        pass


def test_records_made_here_take_their_points_from_the_workers_records(tmp_path, monkeypatch):
    """This process counts no points when a worker's record has them (counting imports torch and the graders, ~2 s):
    a missing file gets the points of its exercise's graded record; a record without them (NaN: a worker that died
    or could not count) gets them counted here, before the journal sees it."""
    monkeypatch.setattr(batch, "sandbox_mode", lambda allow, warn=print: True)
    for student in ("ana", "bo"):
        (tmp_path / student).mkdir()
        (tmp_path / student / "01_positional_encoding.py").write_text("x = 1\n")
    worker_points = {"ana": 7.0, "bo": float("nan")}

    def fake_run(client, tasks):
        for i, (task, _) in tasks.items():
            yield i, ExerciseResult(task.exercise, task.filename, "graded", 1.0, worker_points[task.student])

    counted = []
    real_count = batch.exercise_max_score
    monkeypatch.setattr(batch, "exercise_max_score", lambda ex: counted.append(ex) or real_count(ex))
    monkeypatch.setattr(batch, "_Starting", NoCluster)
    monkeypatch.setattr(batch, "_run", fake_run)
    entries = [("ana", "positional_encoding", tmp_path / "ana" / "01_positional_encoding.py"),
               ("cy", "positional_encoding", None)]
    results = batch.grade_entries(entries, progress=False)
    assert [s.exercises[0].max_score for s in results.submissions] == [7.0, 7.0] and counted == []
    journal = tmp_path / "results.journal.jsonl"
    results = batch.grade_entries(entries[1:] + [("bo", "positional_encoding",
                                                  tmp_path / "bo" / "01_positional_encoding.py")],
                                  progress=False, journal=journal)
    want = points_in_source("positional_encoding")
    assert [s.exercises[0].max_score for s in results.submissions] == [want, want]
    assert counted == ["positional_encoding"]
    assert json.loads(journal.read_text().splitlines()[-1])["result"]["max_score"] == want


def test_each_students_files_are_handed_out_longest_first():
    """Dask runs tasks in the order submitted: students in order, each one's generation notebook (by far the costliest
    grade) first, so the class ends with short tasks; each file is its own task."""
    submitted = []

    class Recorder:                                   # stands in for a Dask client
        def submit(self, fn, task, pure, key):
            submitted.append((task.student, task.exercise, key))
            return key

    tasks = {i: (batch.Task(student, ex.id, ex.notebook, b"", "setup"), "")
             for i, (student, ex) in enumerate((s, ex) for s in ("ana", "bo") for ex in batch.EXERCISES)}
    futures = batch._submit(Recorder(), tasks)
    assert sorted(futures.values()) == list(tasks) and len({key for _, _, key in submitted}) == len(tasks)
    n = len(batch.EXERCISES)
    assert [s for s, _, _ in submitted] == ["ana"] * n + ["bo"] * n
    assert submitted[0][1] == submitted[n][1] == "generation"
    assert submitted[-1][1] == min(batch.EXERCISES, key=lambda ex: ex.grading_cost).id


@pytest.fixture
def results() -> ClassResult:
    """A hand-made graded class with hostile strings in names and messages, and an internal error."""
    failed = TestResult("test_shape", False, 0.0, 1.0, "<script>alert('x')</script> & more",
                        ["positional-encoding", "<i>sinusoid</i>"])
    ok = TestResult("test_formula", True, 2.0, 2.0, "", ["never-shown-for-a-passed-test"])
    return ClassResult([
        StudentResult("<b>eve</b>", [
            ExerciseResult("positional_encoding", "01_positional_encoding.py", "graded", 2.0, 3.0,
                           "1/2 tests passed", [failed, ok]),
            ExerciseResult("attention", "", "missing", 0.0, 3.0,
                           "no 02_attention.ipynb or 02_attention.py was submitted")]),
        StudentResult("../ana", [
            ExerciseResult("positional_encoding", "01_positional_encoding.ipynb", "graded", 3.0, 3.0,
                           "2/2 tests passed", [ok]),
            ExerciseResult("attention", "02_attention.py", "internal", 0.0, 3.0, "the sandbox broke twice: boom")])])


def test_results_json_round_trips_and_keeps_the_record_shape(results, tmp_path):
    report.write_json(results, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert ClassResult.from_dict(data) == results
    assert data["max_score"] == 6.0 and data["submissions"][0]["score"] == 2.0
    record = data["submissions"][1]["exercises"][1]
    assert list(record) == ["exercise", "file", "status", "score", "max_score", "message", "tests"]
    assert record["status"] == "internal" and record["message"] == "the sandbox broke twice: boom"   # no prefix
    assert data["submissions"][0]["exercises"][0]["tests"][0]["concepts"] == ["positional-encoding",
                                                                             "<i>sinusoid</i>"]


def test_an_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown status"):
        ExerciseResult("attention", status="internal grader error")


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
    ana = json.loads((tmp_path / "gs" / "_ana" / "results.json").read_text())
    assert ana["tests"][-1] == {"name": "attention: internal", "score": 0.0, "max_score": 3.0, "status": "failed",
                                "output": "the sandbox broke twice: boom", "visibility": "visible"}
    assert sum(t["max_score"] for t in data["tests"]) == 6.0


def test_feedback_html_escapes_everything_and_shows_no_test_code(results, tmp_path):
    written = report.write_feedback(results, tmp_path / "fb")
    page = (tmp_path / "fb" / "_b_eve__b_.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>eve</b>" not in page and "&lt;b&gt;eve&lt;/b&gt;" in page
    assert "test_shape" in page and "failed" in page
    assert "def test_" not in page and "assert " not in page
    assert "review: positional-encoding, &lt;i&gt;sinusoid&lt;/i&gt;" in page       # the failed test's concepts
    assert "never-shown-for-a-passed-test" not in page
    assert len(written) == 2


def test_summary_table_counts_statuses(results):
    from rich.console import Console
    console = Console(width=120, record=True)
    console.print(report.summary_table(results))
    text = console.export_text()
    assert "positional_encoding" in text and "attention" in text and "2.50 / 3" in text
    attention = next(line for line in text.splitlines() if "attention" in line)
    assert re.findall(r"\d+(?:\.\d+)?", attention)[:5] == ["0", "0", "1", "0", "1"]   # graded..internal


def test_check_passes_a_correct_notebook_and_fails_a_stub(tmp_path):
    from llmstudy.cli import main
    runner = CliRunner()
    good = runner.invoke(main, ["check", str(ADVERSARIAL / "correct" / "01_positional_encoding.ipynb")])
    assert good.exit_code == 0, good.output
    assert "PASS" in good.output and "FAIL" not in good.output
    bad = runner.invoke(main, ["check", str(ADVERSARIAL / "stub" / "01_positional_encoding.py")])
    assert bad.exit_code == 1 and "FAIL" in bad.output and "NotImplementedError" in bad.output


def test_check_show_code_prints_only_what_grading_runs():
    from llmstudy.cli import main
    run = CliRunner().invoke(main, ["check", "--show-code", str(ADVERSARIAL / "shell_escape" /
                                                                 "01_positional_encoding.ipynb")])
    assert run.exit_code == 0
    assert "def positional_encoding" in run.output and "import os" in run.output
    assert "touch" not in run.output and "system" not in run.output


def test_check_reports_a_broken_file_in_one_line():
    from llmstudy.cli import main
    run = CliRunner().invoke(main, ["check", str(ADVERSARIAL / "corrupt_notebook" / "01_positional_encoding.ipynb")])
    assert run.exit_code == 1 and "not a readable notebook" in run.output and "Traceback" not in run.output
