"""Building an nbgrader course from exercises/ + solutions/: its config, the source notebooks, and solved copies.

Runs on the instructor's side only; no learner code is read or run here. See grader/nbgrader/__init__.py for how the
pieces fit together.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import textwrap
from pathlib import Path

import nbformat

from llmstudy.catalog import EXERCISES, Exercise
from llmstudy.grader.nbgrader.grade_cell import grade_cell_source, grade_id

SCHEMA_VERSION = 3
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
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
        graded.source = grade_cell_source(exercise, points, graded.source)
    else:
        graded = nbformat.v4.new_code_cell(grade_cell_source(exercise, points, None))
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

