"""The locked grade cell of an exercise notebook: its source, and what it shows once graded (a report, points).

Both ways of grading fill it the same way: plain `nbgrader autograde` runs its hidden part in the notebook's kernel
(grader/nbgrader/kernel.py), and `llmstudy grade --nbgrader` writes the sandboxed result into it
(grader/nbgrader/gradebook.py). Pure functions of their arguments, importable on either side.
"""
from __future__ import annotations

from llmstudy.catalog import Exercise

BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def grade_id(exercise: Exercise) -> str:
    return f"grade_{exercise.id}"


def grade_cell_source(exercise: Exercise, points: float, self_check: str | None) -> str:
    """The learner's self-check (public tests, visible) followed by the hidden grading, whose value is the last
    expression of the cell: nbgrader's partial credit."""
    visible = self_check.rstrip() if self_check else (
        f"# Graded cell. Check your work first: `llmstudy check {exercise.notebook}`.")
    return (f"{visible}\n"
            f"{BEGIN_HIDDEN}\n"
            f"# Plain `nbgrader autograde` runs the hidden tests here, in the notebook's kernel (not sandboxed);\n"
            f"# `llmstudy grade --nbgrader` writes its sandboxed score here instead, as nbgrader partial credit.\n"
            f"from llmstudy.grader.nbgrader import autograde_score\n"
            f"autograde_score({exercise.id!r}, globals(), points={points!r})\n"
            f"{END_HIDDEN}")


def report(message: str, tests) -> str:
    """What a graded cell prints: the message, then PASS or FAIL per test (tests as dicts or pytest results)."""
    lines = [message]
    for t in tests:
        name, passed, msg = (t["name"], t["passed"], t["message"]) if isinstance(t, dict) else \
            (t.name, t.passed, t.message)
        lines.append(f"  {'PASS' if passed else 'FAIL'} {name}" + (f": {msg}" if msg and not passed else ""))
    return "\n".join(lines)


def cell_points(score: float, max_score: float, points: float) -> float:
    """A score out of max_score, rescaled to a grade cell worth `points` (they differ only when the graders changed
    after `nbgrader init`)."""
    if max_score <= 0:
        return 0.0
    return round(min(score, max_score) * points / max_score, 6)
