"""Official grading of an nbgrader course: sandboxed scores (grader.batch) written into its gradebook.

nbgrader's own autograde pipeline runs with its Execute step replaced by InjectScores, which writes each sandboxed
result into the grade cell as nbgrader's partial credit: timestamps, late penalties, autograded/ notebooks and
formgrader work as usual, and no learner code runs in nbgrader's process. Grader side of the trust boundary.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from llmstudy.catalog import by_id, for_file
from llmstudy.grader.nbgrader.course import CourseError
from llmstudy.grader.nbgrader.grade_cell import cell_points, grade_id, report


def make_inject_scores():
    """The InjectScores preprocessor class, built on first use (see grader/nbgrader/__init__.py's __getattr__)."""
    from nbgrader.preprocessors import NbGraderPreprocessor
    from nbgrader import utils
    from traitlets import Unicode

    class InjectScores(NbGraderPreprocessor):
        """Stands in for nbgrader's Execute: puts llmstudy's sandboxed result into each grade cell's outputs
        (a stdout report, then the points as an execute_result), which SaveAutoGrades records as partial credit.
        A grade cell llmstudy didn't create gets an error output, i.e. 0 points until graded by hand."""

        results_file = Unicode("", help="JSON {student: {notebook: exercise result}} from llmstudy grade").tag(
            config=True)

        def preprocess(self, nb, resources):
            with open(self.results_file, encoding="utf-8") as f:
                results = json.load(f)
            info = resources["nbgrader"]
            self._result = results.get(info["student"], {}).get(info["notebook"])
            return super().preprocess(nb, resources)

        def preprocess_cell(self, cell, resources, index):
            if not utils.is_grade(cell) or cell.cell_type != "code":
                return cell, resources
            result, meta = self._result, cell.metadata["nbgrader"]
            if result is None or meta["grade_id"] != grade_id(by_id(result["exercise"])):
                cell.outputs = [nbformat.v4.new_output(
                    "error", ename="NotGradedByLlmstudy", traceback=[],
                    evalue="llmstudy grades only the grade_<exercise> cells it created; grade this cell by hand")]
                return cell, resources
            points = float(meta["points"])
            earned = cell_points(result["score"], result["max_score"], points)
            text = f"llmstudy (sandboxed): {result['status']}. " + report(result["message"], result["tests"])
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text + "\n"),
                            nbformat.v4.new_output("execute_result", data={"text/plain": repr(earned)},
                                                   execution_count=None)]
            return cell, resources

    return InjectScores


def check_course(course: str | Path, assignment: str) -> str:
    """Raise CourseError unless COURSE is an nbgrader course whose gradebook knows `assignment`; returns the
    gradebook's URL."""
    from nbgrader.api import Gradebook, MissingEntry

    course = Path(course).resolve()
    if not (course / "nbgrader_config.py").exists():
        raise CourseError(f"{course} is not an nbgrader course (no nbgrader_config.py); "
                          f"create one with `llmstudy nbgrader init {course}`")
    missing = f"assignment '{assignment}' is not in {course}/gradebook.db; run " \
              f"`nbgrader generate_assignment {assignment}` in {course} first"
    if not (course / "gradebook.db").exists():
        raise CourseError(missing)
    db_url = f"sqlite:///{course / 'gradebook.db'}"
    with Gradebook(db_url, course_id(course)) as gb:
        try:
            gb.find_assignment(assignment)
        except MissingEntry:
            raise CourseError(missing) from None
    return db_url


def submission_entries(course: str | Path, assignment: str) -> list[tuple[str, str, Path | None]]:
    """(student, exercise_id, notebook path or None) for every student folder in COURSE/submitted/ and every
    exercise notebook of the assignment."""
    course = Path(course)
    source = course / "source" / assignment
    exercises = []
    for nb in sorted(source.glob("*.ipynb")):
        with contextlib.suppress(KeyError):
            exercises.append(for_file(nb))
    if not exercises:
        raise CourseError(f"{source} has no exercise notebooks; run `llmstudy nbgrader init {course} "
                          f"--assignment {assignment}`")
    submitted = course / "submitted"
    students = sorted(p.name for p in submitted.iterdir() if p.is_dir() and (p / assignment).is_dir()) \
        if submitted.is_dir() else []
    if not students:
        raise CourseError(f"no submissions in {submitted}/<student>/{assignment}/; "
                          f"run `nbgrader collect {assignment}` or copy them there")
    entries = []
    for student in students:
        for ex in exercises:
            path = submitted / student / assignment / ex.notebook
            entries.append((student, ex.id, path if path.exists() else None))
    return entries


def course_id(course: Path) -> str:
    """The course id set in COURSE/nbgrader_config.py (nbgrader's own default when unset)."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    return config.CourseDirectory.get("course_id", "default_course")


def nbgrader_env() -> dict[str, str]:
    """The environment for nbgrader subprocesses: nbgrader runs `alembic` from PATH, so this venv's bin goes first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_nbgrader(course: str | Path, *args: str) -> subprocess.CompletedProcess:
    """`nbgrader ARGS...` in COURSE with this Python; output captured."""
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True,
                          env=nbgrader_env())


def write_gradebook(course: str | Path, assignment: str, results: dict) -> dict:
    """Record `results` (the results.json structure) in COURSE's gradebook through nbgrader's autograde pipeline,
    with Execute replaced by InjectScores; then check every grade and write any that nbgrader could not (a
    notebook it failed to read, a student folder without notebooks) straight into the gradebook.

    Returns {"nbgrader_ok": bool, "written_directly": [(student, notebook)], "log": str}."""
    from nbgrader.api import Gradebook, MissingEntry

    course = Path(course).resolve()
    db_url = check_course(course, assignment)
    by_student: dict[str, dict[str, dict]] = {}
    for sub in results["submissions"]:
        for ex_result in sub["exercises"]:
            stem = by_id(ex_result["exercise"]).stem
            by_student.setdefault(sub["student"], {})[stem] = ex_result
    with tempfile.TemporaryDirectory() as tmp:
        results_file = Path(tmp) / "results.json"
        results_file.write_text(json.dumps(by_student), encoding="utf-8")
        preprocessors = ["llmstudy.grader.nbgrader.InjectScores", "nbgrader.preprocessors.LimitOutput",
                         "nbgrader.preprocessors.SaveAutoGrades", "nbgrader.preprocessors.AssignLatePenalties",
                         "nbgrader.preprocessors.CheckCellMetadata"]
        proc = run_nbgrader(course, "autograde", assignment, "--force",
                            f"--InjectScores.results_file={results_file}",
                            "--Autograde.autograde_preprocessors=" + json.dumps(preprocessors))

    written_directly = []
    with Gradebook(db_url, course_id(course)) as gb:
        for student, notebooks in by_student.items():
            gb.update_or_create_student(student)
            gb.update_or_create_submission(assignment, student)
            for stem, r in notebooks.items():
                ex = for_file(stem + ".ipynb")
                try:
                    grade = gb.find_grade(grade_id(ex), stem, assignment, student)
                except MissingEntry:
                    continue   # the assignment in the gradebook doesn't have this exercise
                points = gb.find_grade_cell(grade_id(ex), stem, assignment).max_score
                expected = cell_points(r["score"], r["max_score"], points)
                # cell_points rounds to 6 decimals and sqlite stores a double: a real difference is >= 1e-6
                if grade.auto_score is None or abs(grade.auto_score - expected) > 1e-6:
                    grade.auto_score = expected
                    grade.needs_manual_grade = grade.manual_score is not None
                    written_directly.append((student, stem))
        gb.db.commit()
    return {"nbgrader_ok": proc.returncode == 0, "written_directly": written_directly,
            "log": proc.stdout + proc.stderr}


def grade_course(course: str | Path, assignment: str, **grade_options) -> tuple[dict, dict]:
    """Grade COURSE/submitted/*/<assignment>/ with the sandboxed grader and write the scores into the gradebook.

    grade_options go to grader.batch.grade_entries (workers, device, progress, allow_unsandboxed). Returns the
    grader.results.ClassResult and what write_gradebook returned."""
    from llmstudy.grader.batch import grade_entries

    course = Path(course)
    check_course(course, assignment)
    entries = submission_entries(course, assignment)
    results = grade_entries(entries, **grade_options)
    return results, write_gradebook(course, assignment, results.to_dict())
