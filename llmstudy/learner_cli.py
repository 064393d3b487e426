"""The `llmstudy` command of a learner's release (see llmstudy/release/): `llmstudy check FILE` and `llmstudy lab`.

It runs on the learner's machine with only the learner package installed (the models loader, check() and the public
tests); the repository's own cli.py reuses `lab` from here.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import click


class UserError(click.ClickException):
    """A one-line error for the user's mistakes; exit status 1, no traceback."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Week 1 of 'Generative AI with Large Language Models': `llmstudy lab` opens the notebooks, `llmstudy check
    FILE` runs a notebook's public tests."""


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--show-code", is_flag=True, help="Print exactly the code that grading runs from FILE, and stop.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
def check(file, show_code, device):
    """Run the public tests of one exercise notebook (or .py) on your machine; exit 1 if any fails."""
    from llmstudy.grader.extract import SubmissionError, extract

    try:
        if show_code:
            click.echo(extract(file), nl=False)
            return
        from llmstudy.selfcheck import check_file
        result = check_file(file, device)
    except (KeyError, SubmissionError) as exc:
        raise UserError(exc.args[0]) from None
    except Exception as exc:  # noqa: BLE001 - the learner's own code failed at import
        from llmstudy.grader.submission import describe_exception
        raise UserError(describe_exception("your code at import", exc)) from None
    for test in result.tests:
        mark = click.style("PASS", fg="green") if test.passed else click.style("FAIL", fg="red")
        click.echo(f"{mark}  {test.name} ({test.score:g}/{test.max_score:g})")
        if not test.passed:
            click.echo(f"      {test.message}")
    click.echo(f"{result.exercise}: {result.score:g}/{result.max_score:g} points, {result.message} (public tests; "
               "the hidden graders check more)")
    if any(not t.passed for t in result.tests) or not result.tests:
        sys.exit(1)


@main.command()
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-browser", is_flag=True, help="Start the server without opening a browser tab.")
def lab(folder, no_browser):
    """Open JupyterLab on the exercise notebooks (FOLDER, default: exercises/)."""
    from llmstudy.catalog import EXERCISES_DIR

    folder = (folder or EXERCISES_DIR).resolve()
    if not folder.is_dir():
        raise UserError(f"no notebooks folder at {folder}; give the folder that holds the exercise notebooks")
    if importlib.util.find_spec("jupyterlab") is None:
        raise UserError("JupyterLab is not installed in this Python; run `make setup` (or `pip install jupyterlab "
                        "ipykernel`)")
    # The kernels and any `!llmstudy check` inside a notebook find this environment's commands without activating it.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:    # a container or a VM as root: Jupyter refuses without this
        command.append("--allow-root")
    sys.exit(subprocess.call(command + (["--no-browser"] if no_browser else []), env=env))


if __name__ == "__main__":
    sys.exit(main())
