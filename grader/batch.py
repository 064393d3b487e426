"""Grade a whole class: SUBMISSIONS/<student>/<exercise file> -> the results.json structure.

    results = grade_class(Path("submissions"), workers=8, device="cpu")
    results = grade_entries([("ana", "attention", Path("ana/02_attention.ipynb")), ("bo", "attention", None)])

Each entry is graded in a pool worker (grader.pool) that owns a pre-loaded sandbox zygote (grader.sandbox): the
hidden tests run in the worker, the learner's code in a fresh isolated child. Every entry gets a record whatever its
code does; statuses: graded | missing | error | timeout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmstudy.exercises import EXERCISES, by_id

MAX_FILE_BYTES = 20 << 20     # a notebook with outputs is rarely over a few MB
INTERNAL = "internal grader error: "


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"
    sandboxed: bool = True
    timeout: float = 20.0                 # per call into the learner's code
    budget: float = 200.0                 # all calls of one submission together
    hide: tuple[str, ...] = ()            # more paths the learner's code must not see (outputs, course sources)
    preload: tuple[str, ...] = ("smollm2", "minilm")


@dataclass(frozen=True)
class Task:
    index: int
    student: str
    exercise: str
    file: str | None
    max_score: float


@dataclass
class _WorkerState:
    settings: Settings
    worker: object = None
    counts: dict = field(default_factory=dict)


_STATE: _WorkerState | None = None


# --- in a pool worker ---------------------------------------------------------------------------------------------
def worker_setup(settings: Settings) -> None:
    """Start this worker's sandbox zygote (it loads torch and the models in the background) and meanwhile
    import what the hidden graders use, so the first submission doesn't pay for it."""
    global _STATE
    import atexit
    import importlib

    _STATE = _WorkerState(settings)
    _sandbox_worker(wait=False)
    atexit.register(_close_sandbox_worker)    # the zygote reaps its children before this worker exits
    import torch
    torch.set_num_threads(1)     # one worker per core; the graders' bit-exact comparisons also want one thread
    import transformers  # noqa: F401

    from grader import runner  # noqa: F401
    for ex in graded_exercises():
        importlib.import_module(f"solutions.{ex.id}")


def _sandbox_worker(restart: bool = False, wait: bool = True):
    from grader.sandbox import Limits, SandboxWorker
    state = _STATE
    if state.worker is not None and (restart or not state.worker.alive()):
        state.worker.close()
        state.worker = None
    if state.worker is None:
        s = state.settings
        limits = Limits(call_timeout=s.timeout, budget=s.budget, cpu_seconds=int(s.budget) + 60)
        state.worker = SandboxWorker(device=s.device, sandboxed=s.sandboxed, limits=limits, preload=s.preload,
                                     hide=s.hide, wait=wait)
    return state.worker


def _close_sandbox_worker() -> None:
    if _STATE is not None and _STATE.worker is not None:
        _STATE.worker.close()
        _STATE.worker = None


def _record(task: Task, status: str, message: str, score: float = 0.0, tests: list | None = None) -> dict:
    return {"exercise": task.exercise, "file": Path(task.file).name if task.file else "", "status": status,
            "score": score, "max_score": task.max_score, "message": message, "tests": tests or []}


def read_source(path: Path) -> str:
    """What will run from a submitted file (grader.extract), or SubmissionError with a message for the learner."""
    from grader.extract import SubmissionError, extract
    if path.is_symlink() or path.parent.is_symlink():
        raise SubmissionError(f"{path.name} is a symbolic link (or in a linked folder); submit the file itself")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SubmissionError(f"{path.name} is {size >> 20} MB; clear the notebook's outputs and submit again")
    try:
        return extract(path)
    except SubmissionError:
        raise
    except (RecursionError, MemoryError, ValueError, OSError) as exc:
        raise SubmissionError(f"{path.name} could not be read as Python ({type(exc).__name__}); "
                              "simplify deeply nested code") from None


def grade_task(task: Task) -> dict:
    """One entry's record (the `exercises[]` item of results.json). Never raises for anything the learner did."""
    from grader.extract import SubmissionError

    if task.file is None:
        ex = by_id(task.exercise)
        return _record(task, "missing", f"no {ex.stem}.ipynb or {ex.stem}.py was submitted")
    try:
        source = read_source(Path(task.file))
    except (SubmissionError, OSError) as exc:
        return _record(task, "error", str(exc))
    from grader.sandbox import SandboxBroken
    last = ""
    for attempt in range(2):             # our side broke (zygote died): once more on a fresh zygote
        try:
            return _grade_source(task, source, _sandbox_worker(restart=attempt > 0))
        except SandboxBroken as exc:
            last = str(exc)
    return _record(task, "error", INTERNAL + last)


def _grade_source(task: Task, source: str, worker) -> dict:
    from grader import runner
    from grader.sandbox import SandboxBroken
    from grader.submission import LearnerError, SubmissionTimeout

    try:
        sub = worker.open(task.exercise, source, Path(task.file).name)
    except SubmissionTimeout:
        return _record(task, "timeout", f"importing your code took longer than {worker.limits.call_timeout:g} s; "
                                        "move long-running code out of top-level assignments")
    except LearnerError as exc:
        return _record(task, "error", str(exc))
    try:
        try:
            result = runner.grade(task.exercise, sub)
        except RuntimeError as exc:
            if isinstance(exc, SandboxBroken):
                raise
            return _record(task, "error", INTERNAL + str(exc))
        if sub.broken:
            raise SandboxBroken(sub.broken)
    finally:
        try:
            sub.close()
        except SandboxBroken:
            pass
    tests = [{"name": t.name, "passed": t.passed, "score": t.score, "max_score": t.max_score, "message": t.message}
             for t in result.tests]
    status, notes = "graded", [result.message]
    if sub.timeouts:
        notes.append(f"{sub.timeouts} call(s) ran out of time")
    if sub.deaths:
        notes.append(f"the process running your code died {sub.deaths} time(s)")
    if sub.budget_left <= 0:
        status = "timeout"
        notes.append(f"grading stopped early: your code used its total time of {worker.limits.budget:g} s")
    return _record(task, status, "; ".join(notes), score=result.score, tests=tests)


# --- in the main process ------------------------------------------------------------------------------------------
class _PointsCounter:
    def __init__(self):
        self.total = 0.0

    def pytest_configure(self, config):
        config.addinivalue_line("markers", "points(n): points this test is worth")
        config.addinivalue_line("markers", "public: part of the learner's self-check")

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("points")
            self.total += float(marker.args[0]) if marker else 1.0


def exercise_max_score(exercise_id: str) -> float:
    """The points an exercise's hidden graders are worth (as grader.runner counts them), without running them."""
    import contextlib
    import io

    import pytest
    counter = _PointsCounter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main([str(by_id(exercise_id).grader_path), "--collect-only", "-p", "no:cacheprovider",
                            "-p", "no:terminal", "-o", "addopts=", "-W", "ignore::DeprecationWarning"],
                           plugins=[counter])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        raise RuntimeError(f"the graders for {exercise_id} could not be collected (exit {code})")
    return counter.total


def sandbox_mode(allow_unsandboxed: bool, warn=print) -> bool:
    """True if learner code will be isolated; SandboxUnavailable if it can't be and that wasn't allowed."""
    from grader.sandbox import SandboxUnavailable, isolation_problem
    problem = isolation_problem()
    if problem is None:
        return True
    if not allow_unsandboxed:
        raise SandboxUnavailable(f"can't isolate learner code: {problem}. Grade as root on Linux, or pass "
                                 "--allow-unsandboxed to run it with only separate processes and rlimits")
    from grader.sandbox import python_readable_by_others
    as_root = os.geteuid() == 0 and not python_readable_by_others() if hasattr(os, "geteuid") else False
    warn(f"warning: grading WITHOUT isolation ({problem}); learner code can read files and use the network"
         + ("; it also runs as root, because other users can't read this Python installation" if as_root else ""))
    return False


def find_submissions(submissions_dir: Path, exercises=None) -> list[tuple[str, str, Path | None]]:
    """(student, exercise id, file or None) for every student folder and exercise; a notebook wins over a .py."""
    submissions_dir = Path(submissions_dir)
    if not submissions_dir.is_dir():
        raise FileNotFoundError(f"{submissions_dir} is not a folder; expected SUBMISSIONS/<student>/<file>")
    exercises = exercises or graded_exercises()
    entries = []
    for student in sorted(p for p in submissions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for ex in exercises:
            found = [student / f"{ex.stem}{suffix}" for suffix in (".ipynb", ".py")]
            found = [p for p in found if p.is_file()]
            entries.append((student.name, ex.id, found[0] if found else None))
    return entries


def graded_exercises():
    """Exercises whose hidden graders exist."""
    return tuple(ex for ex in EXERCISES if ex.grader_path.exists())


def grade_class(submissions_dir: Path, workers: int | None = None, device: str = "cpu", progress=True,
                allow_unsandboxed: bool = False, **options) -> dict:
    """Grade SUBMISSIONS/<student>/<file> for every student and exercise; the results.json structure."""
    submissions_dir = Path(submissions_dir)
    options["hide"] = tuple(options.get("hide", ())) + (str(submissions_dir.resolve()),)
    return grade_entries(find_submissions(submissions_dir), workers=workers, device=device, progress=progress,
                         allow_unsandboxed=allow_unsandboxed, **options)


def grade_entries(entries: list[tuple[str, str, Path | None]], workers: int | None = None, device: str = "cpu",
                  progress=True, allow_unsandboxed: bool = False, timeout: float = 20.0,
                  budget: float | None = None, hide: tuple[str, ...] = (), console=None, pool=None) -> dict:
    """Grade (student, exercise id, file or None) entries; the results.json structure, students in entry order.

    timeout: seconds per call into learner code; budget: seconds for all of one submission's calls (default
    10 x timeout); hide: more paths the learner's code must not see (the submissions' folders always are)."""
    from llmstudy.models import resolve_device

    from grader.pool import LocalPool
    warn = console.print if console is not None else print
    sandboxed = sandbox_mode(allow_unsandboxed, warn)
    device = resolve_device(device)
    max_scores = {ex_id: exercise_max_score(ex_id) for ex_id in dict.fromkeys(e[1] for e in entries)}
    tasks = [Task(i, student, ex_id, os.path.abspath(f) if f is not None else None, max_scores[ex_id])
             for i, (student, ex_id, f) in enumerate(entries)]
    hidden = set(hide) | {str(Path(t.file).parent) for t in tasks if t.file}
    settings = Settings(device=device, sandboxed=sandboxed, timeout=timeout, budget=budget or 10 * timeout,
                        hide=tuple(sorted(hidden)))
    records: dict[int, dict] = {}
    to_run = []
    for task in tasks:
        if task.file is None:
            records[task.index] = grade_task(task)
        else:
            to_run.append(task)
    if to_run:
        workers = max(1, min(workers or os.cpu_count() or 1, len(to_run)))
        own_pool = pool is None
        pool = pool or LocalPool(workers, setup=worker_setup, setup_args=(settings,))
        try:
            for task, record in _with_progress(pool.imap_unordered(grade_task, to_run), len(to_run), progress,
                                               console):
                if isinstance(record, BaseException):
                    record = _record(task, "error", INTERNAL + f"{type(record).__name__}: {record}")
                records[task.index] = record
        finally:
            if own_pool:
                pool.close()
    return assemble(tasks, records)


def _with_progress(results, total: int, show: bool, console):
    if not show:
        yield from results
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    columns = (TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as bar:
        job = bar.add_task("", total=total)
        for task, record in results:
            status = record.get("status", "error") if isinstance(record, dict) else "error"
            bar.update(job, advance=1, description=f"{task.student} / {task.exercise}: {status}")
            yield task, record


def assemble(tasks: list[Task], records: dict[int, dict]) -> dict:
    """The results.json structure from per-entry records."""
    students: dict[str, list[dict]] = {}
    for task in tasks:
        students.setdefault(task.student, []).append(records[task.index])
    submissions = [{"student": student, "score": sum(r["score"] for r in recs),
                    "max_score": sum(r["max_score"] for r in recs), "exercises": recs}
                   for student, recs in students.items()]
    per_exercise = {t.exercise: t.max_score for t in tasks}
    return {"max_score": sum(per_exercise.values()), "submissions": submissions}
