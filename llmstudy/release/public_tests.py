"""Step 1 of `llmstudy release` (instructor side): a grader file cut down by AST to its @pytest.mark.public tests,
the module-level definitions they reach and the imports those use; what is left behind (the hidden tests and their
own helpers) is kept for the leak check (llmstudy/release/leaks.py)."""
from __future__ import annotations

import ast
from dataclasses import dataclass

from llmstudy.catalog import Exercise
from llmstudy.release import FORBIDDEN, ReleaseError


def _is_test(node: ast.stmt) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")


def _is_public(node: ast.stmt) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute) and target.attr == "public" and ast.unparse(target) == "pytest.mark.public":
            return True
    return False


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    return []


def _names_used(node: ast.AST) -> set[str]:
    """Every name `node` may refer to: loads, fixture parameters, and strings naming a fixture (usefixtures)."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    names |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
              for a in n.posonlyargs + n.args + n.kwonlyargs}
    names |= {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names


def _reachable(start: list[ast.stmt], definitions: dict[str, ast.stmt]) -> list[ast.stmt]:
    """`start` plus every module-level definition they need, transitively (a fixpoint over names)."""
    kept, todo = list(start), list(start)
    while todo:
        for name in _names_used(todo.pop()):
            node = definitions.get(name)
            if node is not None and node not in kept:
                kept.append(node)
                todo.append(node)
    return kept


def _segment(lines: list[str], node: ast.stmt) -> str:
    """The node's source with its decorators and the comment lines right above it (tolerances are explained there)."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return "\n".join(lines[start:node.end_lineno])


@dataclass
class Cut:
    source: str                  # the public test file
    public: list[str]            # public test names
    hidden: list[str]            # hidden test names
    hidden_nodes: list[ast.stmt]  # the hidden tests and the definitions only they use


def cut_public_tests(exercise: Exercise, grader_source: str) -> Cut:
    """The grader file reduced to its public tests, the definitions they reach and the imports those use."""
    where = f"grader/tests/test_{exercise.id}.py"
    tree = ast.parse(grader_source)
    lines = grader_source.splitlines()
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    tests = [n for n in body if _is_test(n)]
    definitions: dict[str, ast.stmt] = {}
    for node in body:
        if node in imports or node in tests:
            continue
        if not _bound_names(node):
            raise ReleaseError(f"{where}, line {node.lineno}: a module-level statement that defines nothing "
                               f"({ast.unparse(node)[:60]!r}); the release can't tell who needs it, move it into a "
                               "function or fixture")
        for name in _bound_names(node):
            definitions[name] = node
    public = [t for t in tests if _is_public(t)]
    hidden = [t for t in tests if not _is_public(t)]
    if not public:
        raise ReleaseError(f"{where} has no @pytest.mark.public test; a learner's self-check needs at least one")
    always = [definitions["pytestmark"]] if "pytestmark" in definitions else []
    kept = _reachable(public + always, definitions)
    hidden_nodes = [n for n in _reachable(hidden, definitions) if n not in kept]

    used = set().union(*(_names_used(n) for n in kept))
    import_lines, previous = [], None
    for node in imports:
        aliases = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
        if isinstance(node, ast.ImportFrom) and node.module == "__future__" or len(aliases) == len(node.names):
            text = ast.get_source_segment(grader_source, node)
        elif aliases:
            text = ast.unparse(type(node)(**{**node.__dict__, "names": aliases}))
        else:
            continue
        if previous is not None and node.lineno > previous.end_lineno + 1:
            import_lines.append("")           # keep the groups: stdlib, third party, ours
        import_lines.append(text)
        previous = node
    code = [_segment(lines, n) for n in sorted(kept, key=lambda n: n.lineno)]
    docstring = (f'"""Public tests for exercise {exercise.stem[:2]}, {exercise.title.lower()}: the self-check '
                 f'subset of the graders.\n\n'
                 f'`check("{exercise.id}", globals())` in the notebook, or `llmstudy check {exercise.notebook}`, '
                 f'runs them.\n\nPYTEST_DONT_REWRITE: a learner sees only the assert messages.\n"""')
    source = "\n\n\n".join([docstring + "\n" + "\n".join(import_lines), *code]) + "\n"
    for module in imported_modules(source):
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
            raise ReleaseError(f"{where}: a public test needs {module!r}; compare against an oracle from torch or "
                               "transformers, or a small checked-in expected value, instead")
    return Cut(source, [t.name for t in public], [t.name for t in hidden], hidden_nodes)


def imported_modules(source: str) -> set[str]:
    """The absolute modules `source` imports, with each `from M import n` also as M.n (n may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names
