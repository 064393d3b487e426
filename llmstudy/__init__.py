"""llmstudy: the one name the kit claims in site-packages.

The repository's architecture is its top-level folders: grader/, cards/, solutions/, cli.py, exercises/ (the
notebooks) and examples/ (the example class). The wheel installs them inside this package, as llmstudy.grader,
llmstudy.cards, llmstudy.solutions, llmstudy.cli, llmstudy.exercises and llmstudy.examples (setup.py and
pyproject.toml's package-dir), so that installing it on a worker node claims no generic name like `cli`. In a
checkout the same names resolve to the top-level folders: the checkout's root is a second folder of this package.
Code always imports the llmstudy.* names, and reads data files with importlib.resources (llmstudy/catalog.py).
"""
from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "grader" / "__init__.py").is_file():
    __path__.append(str(_checkout))          # noqa: F821 (a package's own __path__)
