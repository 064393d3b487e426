"""On a grading worker (trusted side): the per-batch set-up of a Dask worker and the task that grades one file.

    client.register_plugin(GradingSetup(settings))      # grader.batch: once per worker (and per replacement worker)
    future = client.submit(grade_task, task, pure=False)   # -> grader.results.ExerciseResult

GradingSetup starts the batch's sandbox zygote (grader.sandbox), imports what grading needs (grader.worker_preload)
and counts each exercise's points, in the background, so a new worker takes tasks at once and its first one waits
only for what is left. The grading machine's side (Settings, Task, connect) is grader.cluster, which imports no
Dask until it starts or joins a cluster: `llmstudy grade` starts its workers' forkserver first.
"""
from __future__ import annotations

import inspect
import math
import queue
import tempfile
import threading
from pathlib import Path

from distributed import WorkerPlugin

from llmstudy.grader.cluster import Settings, Task
from llmstudy.grader.results import ExerciseResult


class GradingSetup(WorkerPlugin):
    """Per-worker state: this batch's sandbox zygote, and the graders and references already imported.

    One long-lived thread of its own starts every zygote: the zygote's PR_SET_PDEATHSIG fires when the *thread*
    that forked it ends, so neither a short set-up thread nor one of Dask's executor threads may start it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.name = settings.plugin_name
        self._worker = None
        self._problem: str | None = None
        self._max_scores: dict[str, float] = {}

    def setup(self, worker) -> None:
        tempfile.gettempdir()    # computed once, under a lock that a forked probe must not find held
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._loaded = threading.Event()
        self._owner = threading.Thread(target=self._serve, name="llmstudy-sandbox-owner", daemon=True)
        self._owner.start()      # Dask runs setup on the worker's event loop: don't block it for seconds

    def _serve(self) -> None:
        try:
            self._starter = SandboxStarter(self.settings)
            self._worker = self._starter.start()
            self._import_graders()
        except Exception as exc:  # noqa: BLE001 - reported by every task this worker gets
            self._problem = f"{type(exc).__name__}: {exc}"
        self._loaded.set()
        while (job := self._jobs.get()) is not None:
            fn, reply = job
            try:
                reply.put((True, fn()))
            except Exception as exc:  # noqa: BLE001 - handed back to the task that asked
                reply.put((False, exc))

    def _on_owner(self, fn):
        """fn() run on the owner thread; its value, or its exception raised here."""
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def _import_graders(self) -> None:
        import llmstudy.grader.worker_preload  # noqa: F401  (already imported if forked from a LocalCluster's server)
        import torch
        torch.set_num_threads(1)         # one worker per core; the graders' bit-exact comparisons want one thread

        from llmstudy.grader.batch import exercise_max_score, graded_exercises
        for ex in graded_exercises():
            self._max_scores[ex.id] = exercise_max_score(ex.id)     # counted where the graders run, not by the client
        if self._starter.options["device"] == "cpu":    # the memo's keys name the device its passes ran on
            from llmstudy.grader.reference_cache import warm_memo
            warm_memo()                      # the reference's greedy steps, once per machine; failing costs speed only

    def max_score(self, exercise: str) -> float:
        """The exercise's points as this worker's graders count them; NaN if set-up failed before counting them
        (grader.batch fills it in from the other records)."""
        self._loaded.wait()
        return self._max_scores.get(exercise, math.nan)

    def sandbox(self, restart: bool = False):
        """This worker's SandboxWorker, once set-up has finished; a fresh one if asked or if it died."""
        self._loaded.wait()
        if self._problem is not None:
            raise RuntimeError(self._problem)
        with self._lock:
            if self._worker is not None and (restart or not self._worker.alive()):
                self._worker.close()
                self._worker = None
            if self._worker is None:
                self._worker = self._on_owner(lambda: self._starter.start(wait=True))
            return self._worker

    def teardown(self, worker) -> None:
        self._loaded.wait()
        if self._worker is not None:
            self._worker.close()      # the zygote reaps its children
            self._worker = None
        self._jobs.put(None)          # only now: the owner thread's end sends any zygote still there SIGTERM
        if _closing(worker):
            # The process is about to exit: move everything to the permanent generation so that the interpreter's
            # final collections skip it. A grading worker's exit takes 1.2 s otherwise (torch, the models, pytest's
            # and the graders' objects), 0.3 s with it: most of a class's shutdown. Not when only this plugin is
            # removed from a worker that goes on (an existing cluster): there, frozen cycles would never be freed.
            import gc
            gc.freeze()


def _closing(worker) -> bool:
    from distributed.core import Status
    return getattr(worker, "status", None) in (Status.closing, Status.closing_gracefully, Status.closed)


class SandboxStarter:
    """SandboxWorkers from the batch's settings and what this worker can do, decided once: isolation_problem()
    forks a probe, and a fork while another thread holds a lock (tempfile's, say) can hang the probe."""

    def __init__(self, settings: Settings):
        from llmstudy.grader.sandbox import Limits, SandboxWorker, isolation_problem
        from llmstudy.models import resolve_device

        s = settings
        sandboxed = s.sandboxed
        if sandboxed and (problem := isolation_problem()) is not None:
            if not s.allow_unsandboxed:
                raise RuntimeError(f"this worker can't isolate learner code ({problem}); run `dask worker` as "
                                   "root on Linux, or grade with --allow-unsandboxed")
            sandboxed = False
        limits = Limits(call_timeout=s.timeout, budget=s.budget, cpu_seconds=int(s.budget) + 60)
        self.options = dict(device=resolve_device(s.device), sandboxed=sandboxed, limits=limits, hide=s.hide)
        if "preload" in inspect.signature(SandboxWorker).parameters:
            self.options["preload"] = s.preload

    def start(self, wait: bool = False):
        """A SandboxWorker on a zygote started ahead for this worker (grader/sandbox/launch.py), else a new one."""
        from llmstudy.grader.sandbox import SandboxWorker
        from llmstudy.grader.sandbox.launch import claim
        if (zygote := claim()) is not None:
            try:
                return SandboxWorker(**self.options, wait=wait, zygote=zygote)
            except OSError:              # the template had gone: start our own
                zygote.control.close()
        return SandboxWorker(**self.options, wait=wait)


def grade_task(task: Task) -> ExerciseResult:
    """One submitted file's result. Never raises: our side's failures come back with the status `internal`."""
    from distributed import get_worker

    setup = get_worker().plugins.get(task.setup)
    try:
        return _grade(task, setup)
    except Exception as exc:  # noqa: BLE001 - a result for the batch, not a traceback on a remote worker
        max_score = setup.max_score(task.exercise) if setup is not None else math.nan
        return _result(task, max_score, "internal", f"{type(exc).__name__}: {exc}")


def _result(task: Task, max_score: float, status: str, message: str) -> ExerciseResult:
    return ExerciseResult(task.exercise, task.filename, status, 0.0, max_score, message)


def _grade(task: Task, setup: GradingSetup) -> ExerciseResult:
    from llmstudy.grader.extract import SubmissionError, extract
    from llmstudy.grader.sandbox import SandboxBroken

    setup.sandbox()                      # set-up first: nothing else of ours runs while it forks its probe
    max_score = setup.max_score(task.exercise)
    with tempfile.TemporaryDirectory(prefix="llmstudy-") as tmp:   # extract() reads a file: a private copy
        path = Path(tmp) / Path(task.filename).name
        path.write_bytes(task.data)
        try:
            source = extract(path)
        except SubmissionError as exc:
            return _result(task, max_score, "error", str(exc))
        except (RecursionError, MemoryError, ValueError, OSError) as exc:
            return _result(task, max_score, "error", f"{path.name} could not be read as Python ({type(exc).__name__}); "
                                          "simplify deeply nested code")
    last = ""
    for attempt in range(2):             # our side broke (zygote died): once more on a fresh zygote
        try:
            return _grade_source(task, source, setup.sandbox(restart=attempt > 0), max_score)
        except SandboxBroken as exc:
            last = str(exc)
    return _result(task, max_score, "internal", f"the sandbox broke twice: {last}")


def _grade_source(task: Task, source: str, worker, max_score: float) -> ExerciseResult:
    import torch

    from llmstudy.grader import runner
    from llmstudy.grader.sandbox import SandboxBroken
    from llmstudy.grader.submission import LearnerError, SubmissionTimeout

    torch.set_num_threads(1)
    try:
        sub = worker.open(task.exercise, source, task.filename)
    except SubmissionTimeout as exc:
        return _result(task, max_score, "timeout", f"{exc}; move long-running code out of top-level assignments")
    except LearnerError as exc:
        return _result(task, max_score, "error", str(exc))
    try:
        try:
            result = runner.grade(task.exercise, sub)
        except RuntimeError as exc:
            if isinstance(exc, SandboxBroken):
                raise
            return _result(task, max_score, "internal", str(exc))
        if sub.broken:
            raise SandboxBroken(sub.broken)
    finally:
        try:
            sub.close()
        except SandboxBroken:
            pass
    notes = [result.message]
    if sub.timeouts:
        notes.append(f"{sub.timeouts} call(s) ran out of time")
    if sub.deaths:
        notes.append(f"the process running your code died {sub.deaths} time(s)")
    status = "graded"
    if sub.budget_left <= 0:
        status = "timeout"
        notes.append(f"grading stopped early: your code used its total time of {worker.limits.budget:g} s")
    return ExerciseResult(task.exercise, task.filename, status, result.score, max_score, "; ".join(notes),
                          result.tests)


def imported_code() -> str | None:
    """On a worker: the code_digest() of the graders it imported (grader.worker_preload), None if not yet."""
    import sys
    preload = sys.modules.get("llmstudy.grader.worker_preload")
    return getattr(preload, "IMPORTED_CODE", None)
