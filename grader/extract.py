"""What runs from a learner's file: imports, function/class definitions and top-level assignments, by AST.

Experiments, plots, other top-level calls, IPython magics (%cmd, %%cell) and shell escapes (!cmd) never run, and
neither do an nbgrader notebook's locked grade cells: they belong to the instructor (nbgrader restores them from the
source notebook anyway), and their hidden part imports grader code that learner code never sees.
`llmstudy check FILE --show-code` prints exactly this code.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


class SubmissionError(ValueError):
    """The file can't be read as a submission; the message says what to fix."""


def _code_cells(path: Path) -> list[str]:
    if path.suffix == ".py":
        return [path.read_text(encoding="utf-8", errors="replace")]
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
        sources = []
        for cell in cells:
            if cell.get("cell_type") == "code" and not _locked_grade_cell(cell):
                src = cell.get("source", "")
                sources.append("".join(src) if isinstance(src, list) else str(src))
        return sources
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SubmissionError(f"{path.name} is not a readable notebook ({type(exc).__name__}); "
                              "re-save it from Jupyter or submit a .py file") from None


def _locked_grade_cell(cell: dict) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return isinstance(meta, dict) and bool(meta.get("grade")) and bool(meta.get("locked"))


def _strip_ipython(src: str) -> str:
    """Blank out IPython-only lines so the rest parses; a %%cell magic drops the whole cell."""
    if src.lstrip().startswith("%%"):
        return ""
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in src.splitlines())


def extract(path: str | Path) -> str:
    """The Python source that grading will run for this file."""
    path = Path(path)
    kept: list[str] = []
    for number, src in enumerate(_code_cells(path), start=1):
        try:
            tree = ast.parse(_strip_ipython(src))
        except SyntaxError as exc:
            where = f"code cell {number}, line {exc.lineno}" if path.suffix != ".py" else f"line {exc.lineno}"
            raise SubmissionError(f"syntax error in {path.name}, {where}: {exc.msg}") from None
        nodes = [n for n in tree.body if isinstance(n, KEEP)]
        if nodes:
            kept.append(ast.unparse(ast.Module(body=nodes, type_ignores=[])))
    return "\n\n".join(kept) + "\n"


def load_namespace(path: str | Path) -> dict:
    """Run the extracted code in a fresh namespace (in THIS process: only for self-check and trusted files)."""
    code = extract(path)
    namespace: dict = {"__name__": "submission"}
    exec(compile(code, str(path), "exec"), namespace)  # noqa: S102 - the learner's own code, on their own machine
    return namespace
