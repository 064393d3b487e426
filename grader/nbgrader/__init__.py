"""nbgrader integration: build a course from exercises/ + solutions/, and write sandboxed scores into its gradebook.

    llmstudy nbgrader init COURSE --assignment week1      # COURSE/source/week1/*.ipynb with nbgrader metadata
    cd COURSE && nbgrader generate_assignment week1       # release/week1/: stubs instead of solutions
    ... students' notebooks land in COURSE/submitted/<student>/week1/ (nbgrader collect, or by hand) ...
    llmstudy grade --nbgrader COURSE --assignment week1   # sandboxed grading; scores go into gradebook.db
    nbgrader export                                       # grades.csv; formgrader shows the same scores

Each source notebook has, per exercise function, an nbgrader *solution* cell whose body is the reference code between
`### BEGIN SOLUTION` / `### END SOLUTION` (generate_assignment replaces it with `raise NotImplementedError()`), and
one locked *grade* cell worth the exercise's points (the sum of @pytest.mark.points in grader/tests/test_<id>.py):
the notebook's self-check cell, with the hidden grading appended between `### BEGIN HIDDEN TESTS` / `### END HIDDEN
TESTS` (generate_assignment removes it from the student release; nbgrader restores it when autograding).

Two ways to fill the gradebook, and what each checks:
- `llmstudy grade --nbgrader` (official): only the code that `llmstudy check --show-code` prints runs, in the
  sandbox, against the hidden tests (grader.batch). nbgrader's own autograde pipeline then runs with its Execute
  step replaced by InjectScores, which writes each sandboxed score into the grade cell as nbgrader's partial credit,
  so timestamps, late penalties, autograded/ notebooks and formgrader work as usual, but no learner code runs there.
- plain `nbgrader autograde` (the benchmark's baseline): nbgrader runs the WHOLE notebook in a Jupyter kernel, and
  the grade cell's hidden part runs the same hidden tests in that kernel (autograde_score). Same tests, same points,
  but learner code shares the process with the tests and could change its own score: use it only for trusted work.

The package, one job a file:
- course.py: `llmstudy nbgrader init`: the config, the source notebooks (solution and grade cells), solved copies.
- grade_cell.py: what a grade cell holds: its source, and the report and points it shows once graded.
- kernel.py: autograde_score, run by plain `nbgrader autograde` inside the notebook's kernel, beside learner code.
- gradebook.py: `llmstudy grade --nbgrader`: sandboxed scores into gradebook.db through nbgrader's pipeline.

Course notebooks import `llmstudy.grader.nbgrader.autograde_score` and nbgrader's config names the preprocessor
`llmstudy.grader.nbgrader.InjectScores`, so both names stay here.
"""
from __future__ import annotations

from llmstudy.grader.nbgrader.course import (BEGIN_SOLUTION, END_SOLUTION, CONFIG_TEMPLATE, SCHEMA_VERSION,
                                             CourseError, init_course, max_points, solved_notebook, source_notebook)
from llmstudy.grader.nbgrader.grade_cell import BEGIN_HIDDEN, END_HIDDEN, cell_points, grade_id
from llmstudy.grader.nbgrader.gradebook import (check_course, course_id, grade_course, nbgrader_env, run_nbgrader,
                                                submission_entries, write_gradebook)
from llmstudy.grader.nbgrader.kernel import autograde_score

__all__ = ["BEGIN_HIDDEN", "BEGIN_SOLUTION", "CONFIG_TEMPLATE", "END_HIDDEN", "END_SOLUTION", "SCHEMA_VERSION",
           "CourseError", "autograde_score", "cell_points", "check_course", "course_id", "grade_course", "grade_id",
           "init_course", "max_points", "nbgrader_env", "run_nbgrader", "solved_notebook", "source_notebook",
           "submission_entries", "write_gradebook"]


def __getattr__(name: str):
    # nbgrader imports its preprocessors by dotted name; building InjectScores lazily keeps nbgrader (and nbconvert)
    # out of the notebook kernels that only need autograde_score.
    if name == "InjectScores":
        from llmstudy.grader.nbgrader.gradebook import make_inject_scores

        globals()[name] = cls = make_inject_scores()
        return cls
    raise AttributeError(name)
