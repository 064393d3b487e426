"""Plain `nbgrader autograde`'s grading: the hidden tests, run INSIDE the notebook's Jupyter kernel.

This is the benchmark's baseline and a convenience for trusted work, not official grading: the learner's code ran in
this very process before the grade cell did, so it could have changed the tests, the models or this function, and
with them its own score. Official grading is `llmstudy grade --nbgrader` (grader/nbgrader/gradebook.py), where
learner code runs only in the sandbox.
"""
from __future__ import annotations

import contextlib
import io
import warnings

from llmstudy.grader.nbgrader.grade_cell import cell_points, report


def autograde_score(exercise_id: str, namespace: dict, points: float) -> float:
    """The hidden tests of one exercise on the functions in `namespace` (the kernel's globals), in THIS process.

    Prints one line per test; returns the points earned, rescaled to the grade cell's `points`, which nbgrader reads
    as the cell's partial credit (nbgrader rejects partial credit above the cell's points).
    Anything on stderr would make nbgrader give 0 points, so warnings and library logging are silenced here."""
    from llmstudy.grader.runner import grade
    from llmstudy.grader.submission import InProcessSubmission

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        result = grade(exercise_id, InProcessSubmission(namespace, exercise_id))
    print(report(result.message, result.tests))
    return cell_points(result.score, result.max_score, points)

