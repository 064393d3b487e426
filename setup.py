"""The wheel's layout: the repository's top-level folders, installed inside the one package `llmstudy`.

    grader/ -> llmstudy/grader/     cards/ -> llmstudy/cards/        solutions/ -> llmstudy/solutions/
    cli.py  -> llmstudy/cli.py      exercises/ -> llmstudy/exercises/ (data)    examples/ -> llmstudy/examples/ (data)

pyproject.toml holds the metadata and this mapping; this file adds what setuptools' configuration can't say: a
single top-level module (cli.py) installed into a package. In a checkout the same names resolve through
llmstudy/__init__.py.
"""
from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "llmstudy":
            modules.append(("llmstudy", "cli", "cli.py"))
        return modules


setup(cmdclass={"build_py": BuildPy})
