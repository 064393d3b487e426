"""Where grading tasks run: the workers of a Dask cluster (dask.distributed), on this machine or any other.

    client, cluster = connect(None, workers=2)          # a LocalCluster: 2 worker processes, one thread each
    client, _ = connect("tcp://10.0.0.5:8786")         # an existing cluster: `dask worker`, dask-jobqueue, k8s
    client.register_plugin(GradingSetup(settings))     # once per worker (and per replacement worker)
    future = client.submit(grade_task, task, pure=False)   # -> grader.results.ExerciseResult

On each worker, GradingSetup starts a sandbox zygote (grader.sandbox), imports what grading needs
(grader.worker_preload) and counts each exercise's points, in the background, so a new worker takes tasks at once and
its first one waits only for what is left. A LocalCluster's workers are forked from one process that did those imports
once. The client process needs neither torch nor the graders: every record a worker returns carries its points.
A task carries the submitted file's bytes and its result comes back as data: workers need no shared filesystem,
only the same llmstudy installed and, for the sandbox, root (or user namespaces). Dask pickles tasks and results
between our own trusted processes; learner values never travel this way (they cross from the sandbox as
grader.codec data). A task whose worker dies is retried on another worker at most ALLOWED_FAILURES times (the
scheduler's `distributed.scheduler.allowed-failures`, set here for a LocalCluster), then its future raises
KilledWorker.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import queue
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from distributed import WorkerPlugin

from llmstudy.grader.results import ExerciseResult

OWN_GROUP_ENV = "LLMSTUDY_WORKERS_OWN_GROUP"   # grader.warm: a terminal's Ctrl-C is for `llmstudy serve`, not its workers
MODELS_ENV = "LLMSTUDY_FORKSERVER_MODELS"      # a device: the forkserver loads the models for it (grader.worker_preload)
ALLOWED_FAILURES = 2         # retries after a worker died mid-task; the third death is the submission's `error`
CONNECT_TIMEOUT = "10s"


class ClusterUnavailable(RuntimeError):
    """The Dask scheduler can't be reached or the address is wrong; the message says what to fix."""


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"                   # "auto" is resolved on each worker
    sandboxed: bool = True                # isolate learner code; a worker that can't fails its tasks...
    allow_unsandboxed: bool = False       # ...unless this allows it to grade without isolation
    timeout: float = 20.0                 # CPU seconds per call into the learner's code (Limits.call_timeout)
    budget: float = 200.0                 # wall seconds for all calls of one submission together
    hide: tuple[str, ...] = ()            # more paths the learner's code must not see (outputs, course sources)
    preload: tuple[str, ...] = ("smollm2", "minilm")
    batch: str = ""                       # grader.batch: a nonce, so that two batches alike on one cluster differ too

    @property
    def plugin_name(self) -> str:
        """One plugin per batch, so that two batches on one cluster don't replace or remove each other's sandboxes."""
        return "llmstudy-grading-" + hashlib.sha256(repr(asdict(self)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Task:
    student: str
    exercise: str
    filename: str                         # the submitted file's name (its suffix says notebook or .py)
    data: bytes                           # its contents, read by the grader's machine
    setup: str                            # the GradingSetup plugin that holds this batch's sandbox


# --- on a worker --------------------------------------------------------------------------------------------------
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


# --- on the grader's machine --------------------------------------------------------------------------------------
def connect(scheduler: str | None, workers: int = 1, security=None, port: int = 0, device: str | None = None):
    """(Client, LocalCluster or None): the cluster at `scheduler`, or a new one here with `workers` processes (with
    `security`, a TLS one on 127.0.0.1:`port`: grader.warm). A tls:// scheduler is a warm cluster of this user's:
    its credentials come from grader.warm. `device`: what the new cluster's workers grade on ("cpu", "auto"; None:
    unknown); where that is the CPU, the process they are forked from loads the models once for all of them."""
    if scheduler is None:
        forked = _forked_workers(device)    # first: the forkserver's imports are a fresh cluster's critical path
        import dask
        from distributed import LocalCluster

        config = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}
        if forked:
            config["distributed.worker.multiprocessing-method"] = "forkserver"
        tls = {}
        if security is not None:
            from llmstudy.grader.warm import HOST
            tls = dict(security=security, protocol="tls://", host=HOST, scheduler_port=port)
        with dask.config.set(config):
            # memory_limit=0: the sandbox limits learner code; a per-worker share of RAM would only get a worker
            # holding torch and the models restarted by its nanny on a machine with many cores. The scheduler's
            # HTTP server (health and metrics) takes a free loopback port: distributed's 8787 may be a warm
            # cluster's (grader.warm), and None would still mean 8787.
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                                   dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, **tls)
    from distributed import Client

    if scheduler is None:
        return Client(cluster), cluster
    check_address(scheduler)
    if scheduler.startswith("tls://"):
        from llmstudy.grader.warm import WarmClusterError, security_for
        try:
            security = security_for(scheduler)
        except WarmClusterError as exc:
            raise ClusterUnavailable(str(exc)) from None
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT, security=security), None
    except (OSError, TimeoutError) as exc:
        start = "`llmstudy serve`" if scheduler.startswith("tls://") else "`dask scheduler`"
        raise ClusterUnavailable(f"can't reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT} "
                                 f"({type(exc).__name__}); start it with {start}, or check the host, "
                                 "the port and the firewall") from None


def code_digest() -> str:
    """sha256 (16 hex digits) of the code that decides a grade, by content: every grader source (the hidden tests
    and the sandbox included), the references, the exercise catalog and the model loader."""
    import importlib.util

    import llmstudy
    roots = [Path(importlib.util.find_spec(f"llmstudy.{name}").origin).parent for name in ("grader", "solutions")]
    files = [(f"{root.name}/{p.relative_to(root).as_posix()}", p) for root in roots for p in root.rglob("*.py")]
    base = Path(llmstudy.__file__).parent
    files += [(name, base / name) for name in ("catalog.py", "models.py")]
    digest = hashlib.sha256()
    for name, path in sorted(files):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _imported_code() -> str | None:
    """On a worker: the code_digest() of the graders it imported (grader.worker_preload), None if not yet."""
    import sys
    preload = sys.modules.get("llmstudy.grader.worker_preload")
    return getattr(preload, "IMPORTED_CODE", None)


def stale_workers(client) -> tuple[int, int]:
    """(how many, of how many) workers of an existing cluster imported other grading code than this process has: a
    warm cluster (grader.warm) started before a grader was edited, or a machine with another llmstudy."""
    ours = code_digest()
    theirs = client.run(_imported_code)                  # {worker address: digest or None}
    return sum(d is not None and d != ours for d in theirs.values()), len(theirs)


def check_code(client, scheduler: str) -> None:
    """ClusterUnavailable if any worker at `scheduler` is stale (stale_workers)."""
    stale, total = stale_workers(client)
    if stale:
        raise ClusterUnavailable(f"{stale} of {total} workers at {scheduler} imported other grading code "
                                 "than this llmstudy (a grader edited or llmstudy upgraded since they started); "
                                 "restart them (`llmstudy serve`, or your `dask worker`s) and grade again")


def _forked_workers(device: str | None) -> bool:
    """Whether this machine's workers can be forked from one process that imported grader.worker_preload once: with
    N workers, N - 1 fewer copies of ~3 core-s of imports, at the start of every class. Dask forks its workers from
    multiprocessing's forkserver when asked; its own preload list is replaced by ours (it would import pandas here
    to build it). The forkserver is started here, before this process imports distributed and starts the scheduler:
    its imports (6-8 s on one core of a slow VM) are a fresh class's critical path, and this way they overlap the
    rest of the start instead of following it. A worker its nanny restarts later is spawned as usual."""
    import multiprocessing
    from multiprocessing import forkserver

    from llmstudy.grader.sandbox.launch import TEMPLATE_ENV
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", "llmstudy.grader.worker_preload"])
    told = {TEMPLATE_ENV: "1"}                      # the forkserver starts its workers' zygote template first
    if device is not None:
        told[MODELS_ENV] = device
    os.environ.update(told)
    try:
        forkserver.ensure_running()                 # returns at once; the forkserver imports in the background
    finally:
        for name in told:
            os.environ.pop(name, None)              # read once, by the forkserver just started
    import distributed.utils
    distributed.utils._forkserver_preload_set = True
    return True


def check_address(scheduler: str) -> None:
    """ClusterUnavailable unless `scheduler` looks like a scheduler's address (scheme://HOST:PORT or HOST:PORT)."""
    from distributed.comm import parse_address
    try:
        _, location = parse_address(scheduler)
        host, _, port = location.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("no port")
    except ValueError:
        raise ClusterUnavailable(f"--scheduler {scheduler}: not a scheduler address; give it as tcp://HOST:PORT "
                                 "(what `dask scheduler` prints, e.g. tcp://10.0.0.5:8786)") from None
