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
"""
from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import nbformat

from llmstudy.catalog import EXERCISES, Exercise, by_id, for_file

SCHEMA_VERSION = 3
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SELF_CHECK_MARKERS = ("selfcheck", "llmstudy check", "llmstudy.check")

CONFIG_TEMPLATE = '''\
# nbgrader configuration written by `llmstudy nbgrader init`.
import os
import sys

c = get_config()  # noqa: F821 (provided by nbgrader)

# nbgrader gives a grade cell 0 points if anything reaches stderr; the kernels it starts inherit these, which keep
# model-loading progress bars and library warnings off stderr.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("PYTHONWARNINGS", "ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# nbgrader runs `alembic` from PATH: put this Python's bin folder first, so that `.venv/bin/nbgrader ...` works without
# activating the virtual environment.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

c.CourseDirectory.course_id = {course_id!r}
# Plain `nbgrader autograde` runs the hidden tests inside the notebook's kernel; the first model load can take ~40 s.
c.Execute.timeout = 600
# A learner who deletes the grade cell still gets it graded (nbgrader puts it back).
c.OverwriteCells.add_missing_cells = True
'''


class CourseError(ValueError):
    """A course directory or submission layout problem; the message says what to fix."""


def grade_id(exercise: Exercise) -> str:
    return f"grade_{exercise.id}"


# --- building the source notebooks --------------------------------------------------------------------------------
def _meta(kind: str, cell_id: str, points: float | None = None) -> dict:
    """nbgrader cell metadata, schema 3. kind: solution | grade | readonly. Checksums are nbgrader's job."""
    meta = {"grade": kind == "grade", "solution": kind == "solution", "locked": kind in ("grade", "readonly"),
            "grade_id": cell_id, "schema_version": SCHEMA_VERSION, "task": False}
    if kind == "grade":
        meta["points"] = points
    return {"nbgrader": meta}


def max_points(exercise: Exercise) -> float:
    """Points the hidden tests of `exercise` are worth, counted as official grading counts them."""
    from llmstudy.grader.batch import exercise_max_score

    if not exercise.grader_path.exists():
        raise CourseError(f"no graders for '{exercise.id}' ({exercise.grader_path} is missing)")
    try:
        points = exercise_max_score(exercise.id)
    except RuntimeError as exc:
        raise CourseError(str(exc)) from None
    if points <= 0:
        raise CourseError(f"the graders in {exercise.grader_path} are worth no points")
    return points


def _bindings(tree: ast.Module) -> dict[str, ast.stmt]:
    """Top-level names a module binds, and the statement that binds each."""
    bound: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        bound[name.id] = node
    return bound


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _body_start(fn: ast.FunctionDef) -> int:
    """The (1-based) line where fn's body starts, after its docstring if it has one."""
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno + 1
    return first.lineno


class _Reference:
    """solutions/<id>.py, parsed: each API function's body as text, and what it needs from module level."""

    def __init__(self, exercise: Exercise):
        path = exercise.solution_path
        if not path.exists():
            raise CourseError(f"no reference solution for '{exercise.id}' ({path} is missing)")
        self.source = path.read_text(encoding="utf-8")
        self.lines = self.source.splitlines()
        self.tree = ast.parse(self.source)
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
        self.bindings = _bindings(self.tree)
        missing = [f for f in exercise.functions if f not in self.functions]
        if missing:
            raise CourseError(f"{path} does not define {', '.join(missing)}")

    def body(self, fn: str) -> str:
        node = self.functions[fn]
        return textwrap.dedent("\n".join(self.lines[_body_start(node) - 1:node.end_lineno])).strip("\n")

    def support(self, fn: str, available: set[str]) -> list[str]:
        """Module-level code of the solution that `fn` needs and the notebook doesn't have (imports, helpers)."""
        needed: list[ast.stmt] = []
        todo = list(_names_used(self.functions[fn]))
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen or name in available or name not in self.bindings:
                continue
            seen.add(name)
            node = self.bindings[name]
            if node not in needed:
                needed.append(node)
                todo.extend(_names_used(node))
        needed.sort(key=lambda n: n.lineno)
        return [ast.get_source_segment(self.source, n) for n in needed]


def _solution_cell_source(source: str, exercise: Exercise, ref: _Reference, available: set[str]) -> str:
    """The notebook cell with each stub function's body (after its docstring) replaced by the reference body,
    wrapped in BEGIN/END SOLUTION so that generate_assignment turns it back into a stub."""
    tree = ast.parse(_ipython_free(source))         # magics blanked line by line: line numbers still match
    lines = source.splitlines()
    stubs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in exercise.functions]
    for fn in sorted(stubs, key=lambda n: n.lineno, reverse=True):   # bottom-up keeps earlier line numbers valid
        start = _body_start(fn)
        indent = " " * fn.body[0].col_offset
        region = [*ref.support(fn.name, available), ref.body(fn.name)]
        solution = [indent + BEGIN_SOLUTION,
                    *(indent + line if line.strip() else "" for line in "\n\n".join(region).splitlines()),
                    indent + END_SOLUTION]
        lines[start - 1:fn.end_lineno] = solution
    return "\n".join(lines)


def _grade_cell_source(exercise: Exercise, points: float, self_check: str | None) -> str:
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


def _is_self_check(source: str) -> bool:
    return any(marker in source for marker in SELF_CHECK_MARKERS)


def source_notebook(exercise: Exercise, points: float | None = None) -> nbformat.NotebookNode:
    """exercises/<nb> turned into an nbgrader source notebook (see the module docstring): stub cells become solution
    cells, the last self-check cell becomes the locked grade cell (appended at the end if there is none), and other
    self-check cells become read-only."""
    if not exercise.notebook_path.exists():
        raise CourseError(f"exercise notebook {exercise.notebook_path} is missing")
    nb = nbformat.read(exercise.notebook_path, as_version=4)
    ref = _Reference(exercise)
    points = max_points(exercise) if points is None else points

    code = [c for c in nb.cells if c.cell_type == "code"]
    available: set[str] = set()
    for cell in code:
        with contextlib.suppress(SyntaxError):
            available |= _bindings(ast.parse(_ipython_free(cell.source))).keys()

    found: set[str] = set()
    self_checks = []
    for cell in code:
        cell.outputs, cell.execution_count = [], None
        try:
            tree = ast.parse(_ipython_free(cell.source))
        except SyntaxError:
            continue
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} & set(exercise.functions)
        if defined:
            cell.source = _solution_cell_source(cell.source, exercise, ref, available)
            cell.metadata.update(_meta("solution", "solution_" + "_".join(sorted(defined))))
            found |= defined
        elif _is_self_check(cell.source):
            self_checks.append(cell)
            cell.metadata.update(_meta("readonly", f"selfcheck_{len(self_checks)}"))
    missing = [f for f in exercise.functions if f not in found]
    if missing:
        raise CourseError(f"{exercise.notebook_path} has no stub cell defining {', '.join(missing)}")

    if self_checks:
        graded = self_checks[-1]
        graded.source = _grade_cell_source(exercise, points, graded.source)
    else:
        graded = nbformat.v4.new_code_cell(_grade_cell_source(exercise, points, None))
        nb.cells.append(graded)
    graded.metadata.update(_meta("grade", grade_id(exercise), points))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _ipython_free(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines())


def init_course(course: str | Path, assignment: str = "week1", course_id: str | None = None,
                exercises: tuple[Exercise, ...] = EXERCISES, force: bool = False) -> list[Path]:
    """Create (or, with force, refresh) an nbgrader course: nbgrader_config.py and source/<assignment>/*.ipynb."""
    course = Path(course)
    target = course / "source" / assignment
    if target.exists() and any(target.iterdir()) and not force:
        raise CourseError(f"{target} already has files; pass --force to rebuild the source notebooks")
    notebooks = [(ex, source_notebook(ex)) for ex in exercises]      # build all first: fail before writing
    target.mkdir(parents=True, exist_ok=True)
    config = course / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG_TEMPLATE.format(course_id=course_id or course.resolve().name), encoding="utf-8")
    written = []
    for ex, nb in notebooks:
        path = target / ex.notebook
        nbformat.write(nb, path)
        written.append(path)
    return written


def solved_notebook(release: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A student's notebook with every exercise solved: the release notebook (stubs) with each solution cell
    replaced by the source notebook's cell of the same grade_id, minus the BEGIN/END SOLUTION lines."""
    def solution_cells(nb):
        return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
                if c.metadata.get("nbgrader", {}).get("solution")}

    reference = solution_cells(source)
    solved = copy.deepcopy(release)
    for cell_id, cell in solution_cells(solved).items():
        cell.source = "\n".join(line for line in reference[cell_id].source.splitlines()
                                if line.strip() not in (BEGIN_SOLUTION, END_SOLUTION))
    return solved


# --- nbgrader's own autograde: runs inside the notebook's kernel ---------------------------------------------------
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
    print(_report(result.message, result.tests))
    return cell_points(result.score, result.max_score, points)


def _report(message: str, tests) -> str:
    lines = [message]
    for t in tests:
        name, passed, msg = (t["name"], t["passed"], t["message"]) if isinstance(t, dict) else \
            (t.name, t.passed, t.message)
        lines.append(f"  {'PASS' if passed else 'FAIL'} {name}" + (f": {msg}" if msg and not passed else ""))
    return "\n".join(lines)


# --- writing sandboxed scores into the gradebook ------------------------------------------------------------------
def _make_inject_scores():
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
            if result is None or meta["grade_id"] != f"grade_{result['exercise']}":
                cell.outputs = [nbformat.v4.new_output(
                    "error", ename="NotGradedByLlmstudy", traceback=[],
                    evalue="llmstudy grades only the grade_<exercise> cells it created; grade this cell by hand")]
                return cell, resources
            points = float(meta["points"])
            earned = cell_points(result["score"], result["max_score"], points)
            text = f"llmstudy (sandboxed): {result['status']}. " + _report(result["message"], result["tests"])
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text + "\n"),
                            nbformat.v4.new_output("execute_result", data={"text/plain": repr(earned)},
                                                   execution_count=None)]
            return cell, resources

    return InjectScores


def __getattr__(name: str):
    # nbgrader imports its preprocessors by dotted name; building InjectScores lazily keeps nbgrader (and nbconvert)
    # out of the notebook kernels that only need autograde_score.
    if name == "InjectScores":
        globals()[name] = cls = _make_inject_scores()
        return cls
    raise AttributeError(name)


def cell_points(score: float, max_score: float, points: float) -> float:
    """A score out of max_score, rescaled to a grade cell worth `points` (they differ only when the graders changed
    after `nbgrader init`)."""
    if max_score <= 0:
        return 0.0
    return round(min(score, max_score) * points / max_score, 6)


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
