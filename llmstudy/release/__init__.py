"""What an instructor hands to learners: `llmstudy release OUT` (trusted, instructor side; never shipped itself).

    OUT/README.md, OUT/Makefile     the learner's two commands: `make setup`, then `make lab`
    OUT/exercises/                  the five notebooks with stubs (or nbgrader's student notebooks), and data/
    OUT/pyproject.toml              the learner package, installed with `pip install -e .` into OUT/.venv:
    OUT/llmstudy/, OUT/grader/, ...   the models loader, check(), `llmstudy check`, copied from this repository:
                                      the modules that ENTRY_POINTS import, followed import by import, and their
                                      packages' data files (the deck's concepts, which check() names)
    OUT/llmstudy/public_tests/        each grader file cut down by AST to its @pytest.mark.public tests

The steps, each a module of this package, in the order build() takes them:

    public_tests.py      cut the public tests out of each grader file
    learner_package.py   follow the imports, pick the dependencies, write the learner's pyproject, Makefile, README
    leaks.py             check the folder for leaks (a line of solutions/*.py, a hidden test's name, a value only the
                         hidden tests use)
    build.py             write it all into a staging folder, run the leak check, and move it into place only if clean

This file holds only what they share.
"""
from __future__ import annotations

from pathlib import Path

# The checkout this builds from: it reads the repository's pyproject.toml and Makefile (the pins), so a release is
# built from a clone, not from an installed wheel.
ROOT = Path(__file__).resolve().parent.parent.parent
# Never in a release: the answers and the hidden graders (by the bare names too, as a checkout's folders).
FORBIDDEN = ("llmstudy.solutions", "llmstudy.grader.tests", "solutions", "grader.tests")
PUBLIC_TESTS = "llmstudy/public_tests"


class ReleaseError(RuntimeError):
    """The release can't be built, or would leak; the message says what and where."""
