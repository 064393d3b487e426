"""Writers for a graded class (a grader.results.ClassResult): JSON, CSV, Gradescope, HTML feedback, and the summary
table printed at the end of `llmstudy grade`. They only read the result; none of them computes a score.

Only what the results hold is written: test names, scores, the learner-facing messages and the concepts a failed
test points to. Hidden tests' code never appears, and every string from a submission (student names, messages) is
escaped in HTML (the template's autoescape). Nothing depends on time or grading order, so the same results give the
same bytes.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from llmstudy.grader.results import STATUSES, ClassResult, StudentResult


def safe_name(student: str) -> str:
    """A file name for a student id: letters, digits, '-', '_' and '.' kept, everything else '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", student).lstrip(".")
    return name or "_"


def _unique_names(results: ClassResult) -> dict[str, str]:
    names: dict[str, str] = {}
    taken: set[str] = set()
    for sub in results.submissions:
        base = name = safe_name(sub.student)
        n = 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names[sub.student] = name
    return names


def _points(x: float) -> str:
    return f"{x:g}"


def write_json(results: ClassResult, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(results.to_json(), encoding="utf-8")


def write_csv(results: ClassResult, path: Path) -> None:
    """One row per student, one column per exercise (its score), and the total."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = results.exercise_ids
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["student", *ids, "total"])
        for sub in results.submissions:
            scores = {ex.exercise: ex.score for ex in sub.exercises}
            writer.writerow([sub.student, *(_points(scores[i]) if i in scores else "" for i in ids),
                             _points(sub.score)])


def gradescope_results(sub: StudentResult) -> dict:
    """Gradescope's autograder results.json for one student (gradescope-autograders.readthedocs.io/en/latest/specs):
    one test entry per hidden test, plus one per exercise that could not be graded."""
    tests = []
    for ex in sub.exercises:
        if ex.tests:
            for t in ex.tests:
                tests.append({"name": f"{ex.exercise}: {t.name}", "score": t.score, "max_score": t.max_score,
                              "status": "passed" if t.passed else "failed", "output": t.message,
                              "visibility": "visible"})
        else:
            tests.append({"name": f"{ex.exercise}: {ex.status}", "score": ex.score, "max_score": ex.max_score,
                          "status": "failed", "output": ex.message, "visibility": "visible"})
    summary = "\n".join(f"{ex.exercise}: {ex.status}, {_points(ex.score)}/{_points(ex.max_score)} - {ex.message}"
                        for ex in sub.exercises)
    return {"score": sub.score, "output": summary, "tests": tests}


def write_gradescope(results: ClassResult, folder: Path) -> list[Path]:
    """DIR/<student>/results.json for each student."""
    names = _unique_names(results)
    written = []
    for sub in results.submissions:
        path = Path(folder) / names[sub.student] / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(gradescope_results(sub), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _template():
    from jinja2 import Environment, PackageLoader, StrictUndefined
    env = Environment(loader=PackageLoader("llmstudy.grader", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["points"] = _points
    return env.get_template("feedback.html")


def feedback_html(sub: StudentResult) -> str:
    """One student's page (grader/templates/feedback.html): each exercise's status and message, each test's
    outcome and message, and for a failed test the concepts to review."""
    return _template().render(sub=sub) + "\n"


def write_feedback(results: ClassResult, folder: Path) -> list[Path]:
    """DIR/<student>.html for each student."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = _unique_names(results)
    template = _template()
    written = []
    for sub in results.submissions:
        path = folder / f"{names[sub.student]}.html"
        path.write_text(template.render(sub=sub) + "\n", encoding="utf-8")
        written.append(path)
    return written


def summary_table(results: ClassResult):
    """A rich Table: per exercise, how many submissions had each status and the mean score."""
    from rich.table import Table

    table = Table(title=f"{len(results.submissions)} students graded")
    table.add_column("exercise")
    for status in STATUSES:
        table.add_column(status, justify="right")
    table.add_column("mean score", justify="right")
    for ex_id in results.exercise_ids:
        rows = [ex for _, ex in results.records() if ex.exercise == ex_id]
        counts = [sum(r.status == s for r in rows) for s in STATUSES]
        mean = sum(r.score for r in rows) / len(rows)
        table.add_row(ex_id, *(str(c) for c in counts), f"{mean:.2f} / {_points(rows[0].max_score)}")
    totals = [s.score for s in results.submissions]
    if totals:
        table.add_section()
        table.add_row("total", *([""] * len(STATUSES)),
                      f"{sum(totals) / len(totals):.2f} / {_points(results.max_score)}")
    return table
