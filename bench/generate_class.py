"""Generate a class of submissions for an nbgrader course built by `llmstudy nbgrader init`: deterministic, a mix of
correct, buggy and stub notebooks, made from the course's own release (stubs) and source (reference) notebooks.

    python bench/generate_class.py COURSE --students 20 [--assignment week1] [--plain DIR] [--seed 0]

writes COURSE/submitted/<student>/<assignment>/<nb>.ipynb (what `nbgrader autograde` and `llmstudy grade --nbgrader`
read), optionally the same files as DIR/<student>/<nb>.ipynb (what plain `llmstudy grade DIR` reads), and
COURSE/class_manifest.json: which variant each student got for each exercise.

- correct: the release notebook with each solution cell's stub replaced by the reference code;
- buggy:   correct, then one arithmetic operator, comparison or number in one exercise function mutated (seeded);
           a mutant can be equivalent (seed 0, 8 students: 1 of 10 keeps full marks, range(n, -1, -1) -> -2);
- stub:    the release notebook as handed out (`raise NotImplementedError()`).
"""
from __future__ import annotations

import argparse
import ast
import json
import random
import shutil
from pathlib import Path

import nbformat

from llmstudy.grader.nbgrader import solved_notebook
from llmstudy.catalog import for_file

VARIANTS = (("correct", 0.5), ("buggy", 0.3), ("stub", 0.2))
_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
          ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}


def _is_solution(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def _mutation_sites(tree: ast.Module, functions: tuple[str, ...]) -> list[tuple[ast.AST, str, str]]:
    """(node, what to change, function) inside the exercise functions; `while` conditions are left alone so that no mutant
    loops forever (the benchmark measures grading, not timeouts)."""
    protected = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.While):
            protected |= {id(n) for n in ast.walk(node.test)}
    sites = []
    for fn in tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name in functions):
            continue
        for node in ast.walk(fn):
            if id(node) in protected:
                continue
            if isinstance(node, ast.BinOp) and type(node.op) in _SWAPS:
                sites.append((node, "op", fn.name))
            elif isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAPS:
                sites.append((node, "cmp", fn.name))
            elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
                sites.append((node, "const", fn.name))
    return sites


def mutate(nb: nbformat.NotebookNode, functions: tuple[str, ...], rng: random.Random) -> str:
    """Change one operator, comparison or number in one exercise function of `nb`, in place; returns what changed."""
    candidates = []
    for index, cell in enumerate(nb.cells):
        if _is_solution(cell):
            tree = ast.parse(cell.source)
            candidates += [(index, i) for i in range(len(_mutation_sites(tree, functions)))]
    if not candidates:
        raise ValueError("nothing to mutate in the solution cells")
    index, site = rng.choice(candidates)
    tree = ast.parse(nb.cells[index].source)
    node, kind, fn = _mutation_sites(tree, functions)[site]
    before = ast.unparse(node)
    if kind == "op":
        node.op = _SWAPS[type(node.op)]()
    elif kind == "cmp":
        node.ops[0] = _SWAPS[type(node.ops[0])]()
    else:
        node.value = node.value + 1
    nb.cells[index].source = ast.unparse(tree)
    return f"{fn}: {before} -> {ast.unparse(node)}"


def generate_class(course: str | Path, students: int, assignment: str = "week1", plain: str | Path | None = None,
                   seed: int = 0) -> dict:
    """Write `students` submissions into COURSE/submitted/ (and `plain`); returns the manifest."""
    course = Path(course)
    release_dir, source_dir = course / "release" / assignment, course / "source" / assignment
    notebooks = sorted(release_dir.glob("*.ipynb"))
    if not notebooks:
        raise SystemExit(f"{release_dir} has no notebooks; run `nbgrader generate_assignment {assignment}` first")
    pairs = [(for_file(p), nbformat.read(p, as_version=4), nbformat.read(source_dir / p.name, as_version=4))
             for p in notebooks]
    rng = random.Random(seed)
    names, weights = zip(*VARIANTS)
    manifest: dict = {}
    for k in range(students):
        student = f"student{k:03d}"
        folder = course / "submitted" / student / assignment
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        manifest[student] = {}
        for exercise, release, source in pairs:
            variant = rng.choices(names, weights)[0]
            if variant == "stub":
                nb, note = release, ""
            else:
                nb, note = solved_notebook(release, source), ""
                if variant == "buggy":
                    note = mutate(nb, exercise.functions, rng)
            nbformat.write(nb, folder / exercise.notebook)
            manifest[student][exercise.id] = {"variant": variant, "mutation": note} if note else {"variant": variant}
            if plain is not None:
                (Path(plain) / student).mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / exercise.notebook, Path(plain) / student / exercise.notebook)
    (course / "class_manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("course")
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--assignment", default="week1")
    parser.add_argument("--plain", default=None, help="also write DIR/<student>/<nb>.ipynb for `llmstudy grade DIR`")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = generate_class(args.course, args.students, args.assignment, args.plain, args.seed)
    counts: dict[str, int] = {}
    for per_student in manifest.values():
        for entry in per_student.values():
            counts[entry["variant"]] = counts.get(entry["variant"], 0) + 1
    print(f"{len(manifest)} students: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
