"""Running `llmstudy grade` on the example class as a separate process, and reading what it wrote: shared by
tests/test_cluster.py and tests/test_warm.py (the session's `local` run, in conftest.py, is their reference).

Every run grades examples/class less dan's endless generation loop (see without_endless_loop), sandboxed, with the
demo's --timeout 8 (the class finishes well inside its calls' limits even on a loaded 2-core machine).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmstudy.grader.sandbox import isolation_problem

ROOT = Path(__file__).resolve().parent.parent
CLASS = ROOT / "examples" / "class"
WAIT = 600                                           # seconds any one grading run may take on a loaded machine

sandboxed = pytest.mark.skipif(isolation_problem() is not None,
                               reason=f"grading needs the sandbox: {isolation_problem()}")


def grade_command(out: Path, *extra: str, klass: Path = CLASS) -> list[str]:
    return [sys.executable, "-m", "llmstudy.cli", "grade", str(klass), "--out", str(out / "results.json"),
            "--csv", str(out / "grades.csv"), "--gradescope", str(out / "gradescope"),
            "--feedback", str(out / "feedback"), "--device", "cpu", "--timeout", "8", *extra]


def grade(out: Path, *extra: str, klass: Path = CLASS, env: dict | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run(grade_command(out, *extra, klass=klass), cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def scores(out: Path) -> dict[tuple[str, str], tuple[str, float]]:
    data = json.loads((out / "results.json").read_text())
    return {(s["student"], e["exercise"]): (e["status"], e["score"]) for s in data["submissions"]
            for e in s["exercises"]}


def journal_rows(out: Path) -> list[dict]:
    """The journal's complete records (a line torn by a kill doesn't count, as in grader.batch.Journal)."""
    rows = []
    for line in (out / "results.journal.jsonl").read_text().splitlines()[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def output_files(out: Path) -> dict[str, bytes]:
    """Every report file (not the journal, which records arrival order) by path relative to `out`."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith(".journal.jsonl")}


def wait_for(condition, what: str, timeout: float = WAIT, every: float = 0.2):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def without_endless_loop(source: Path, target: Path) -> Path:
    """A copy of the example class without dan's endless generation loop, which costs its file the whole time budget
    (80 s here, on one worker, in every run) and says nothing about Dask; timeouts are tested in
    tests/test_grade_adversarial.py (default_argument_loop, an endless import), and `make demo` grades dan."""
    shutil.copytree(source, target)
    (target / "dan" / "04_generation.py").unlink()
    return target
