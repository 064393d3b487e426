"""Step 5 of `llmstudy release` (instructor side): the leak check, run over the staged folder before it is moved into
place. A leak is a line of solutions/*.py (longer than SOLUTION_LINE_MIN and not in the stub notebooks), a hidden
test's name, or a data constant only the hidden tests use (as text for strings, as a code constant for numbers)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from llmstudy.catalog import EXERCISES
from llmstudy.release import ROOT
from llmstudy.release.public_tests import Cut

# Solution lines this short are idioms every implementation shares ("return out"); longer ones give an answer away.
SOLUTION_LINE_MIN = 31
# Hidden strings shorter than this are words and names ("cpu", "smollm2"), not expected values.
HIDDEN_STRING_MIN = 8


def _message_parts(node: ast.AST) -> set[int]:
    """ids of the constants that are message text (assert messages, f-string pieces, raised messages) or metadata
    (decorators: points, concept ids), not data."""
    ids: set[int] = set()
    for n in ast.walk(node):
        holders = list(getattr(n, "decorator_list", []))
        holders += [n.msg] if isinstance(n, ast.Assert) and n.msg else []
        holders += [n] if isinstance(n, ast.JoinedStr) else []
        holders += [n.exc] if isinstance(n, ast.Raise) and n.exc else []
        for holder in holders:
            ids |= {id(c) for c in ast.walk(holder) if isinstance(c, ast.Constant)}
    return ids


def _constants(nodes: list[ast.AST], data_only: bool) -> set:
    found = set()
    for node in nodes:
        skip = _message_parts(node) if data_only else set()
        for c in ast.walk(node):
            if isinstance(c, ast.Constant) and id(c) not in skip and type(c.value) in (str, int, float):
                found.add(c.value)
    return found


def _distinctive(value) -> bool:
    """An expected value worth looking for: a string of some length, or a number no test suite shares by chance."""
    if isinstance(value, str):     # one word or identifier ("tokenizer", "max-new-tokens") is shared vocabulary
        return len(value.strip()) >= HIDDEN_STRING_MIN and not re.fullmatch(r"[\w.\-]+", value.strip())
    if isinstance(value, int):
        return abs(value) >= 100 and value % 100 != 0 and value not in (128, 256, 512, 1024, 2048, 4096)
    return len(repr(abs(value)).replace(".", "").strip("0")) >= 3 and "e" not in repr(value)


def hidden_values(cut: Cut) -> set:
    """The data constants (not message text) of the hidden tests and their own helpers that no public test uses."""
    public_tree = ast.parse(cut.source)
    return {v for v in _constants(cut.hidden_nodes, data_only=True) - _constants([public_tree], data_only=False)
            if _distinctive(v)}


def _given_lines() -> set[str]:
    """Lines of the stub notebooks as handed out (signatures, docstrings, constants): the exercise, not its answer."""
    lines: set[str] = set()
    for ex in EXERCISES:
        for cell in json.loads(ex.notebook_path.read_text(encoding="utf-8"))["cells"]:
            lines |= {line.strip() for line in "".join(cell["source"]).splitlines()}
    return lines


def _import_lines() -> set[str]:
    """The solutions' import lines (`from __future__ import annotations`): every module has them, they answer nothing."""
    lines: set[str] = set()
    for path in (ROOT / "solutions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        lines |= {ast.get_source_segment(source, n).strip() for n in ast.parse(source).body
                  if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def _notebook_texts(text: str) -> list[str]:
    texts = []
    for cell in json.loads(text)["cells"]:
        texts.append("".join(cell.get("source", "")))
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            texts += ["".join(v) for v in output.get("data", {}).values() if isinstance(v, (str, list))]
    return texts


def _python_constants(path: Path, text: str) -> set:
    sources = [text] if path.suffix == ".py" else []
    if path.suffix == ".ipynb":
        sources = ["".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
    found = set()
    for source in sources:
        try:
            tree = ast.parse("\n".join("" if ln.lstrip().startswith(("!", "%")) else ln for ln in source.splitlines()))
        except SyntaxError:
            continue
        found |= _constants([tree], data_only=False)
    return found


def find_leaks(folder: Path, hidden_names: set[str], values: set) -> list[str]:
    """One line per leak in `folder`: a line of solutions/*.py (longer than 30 characters and not in the stub
    notebooks), a hidden test's name, or a hidden expected value (as text for strings, as a code constant for
    numbers)."""
    given = _given_lines() | _import_lines()
    solution_lines = {line.strip(): f"solutions/{p.name}" for p in sorted((ROOT / "solutions").glob("*.py"))
                      for line in p.read_text(encoding="utf-8").splitlines()
                      if len(line.strip()) >= SOLUTION_LINE_MIN and line.strip() not in given}
    strings = sorted(v for v in values if isinstance(v, str))
    numbers = {v for v in values if not isinstance(v, str)}
    leaks = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".venv" not in p.relative_to(folder).parts):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        name = path.relative_to(folder)
        raw = text
        if path.suffix == ".ipynb":     # a notebook's cells and outputs as they read, not as JSON-escaped strings
            text += "\n" + "\n".join(_notebook_texts(raw))
        for line in {ln.strip() for ln in text.splitlines()} & solution_lines.keys():
            leaks.append(f"{name}: a line of {solution_lines[line]}: {line[:70]!r}")
        # a whole name: a hidden test_fit must not match a public test_fit_uses_every_example
        leaks += [f"{name}: the hidden test name {t}" for t in sorted(hidden_names)
                  if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text)]
        leaks += [f"{name}: the hidden expected value {s[:60]!r}" for s in strings if s in text]
        if path.suffix in (".py", ".ipynb"):
            leaks += [f"{name}: the hidden expected value {v!r}" for v in sorted(numbers & _python_constants(path, raw))]
    return leaks
