"""Where grading tasks run: the workers of a Dask cluster (dask.distributed), on this machine or any other.

    client, cluster = connect(None, workers=2)          # a LocalCluster: 2 worker processes, one thread each
    client, _ = connect("tcp://10.0.0.5:8786")         # an existing cluster: `dask worker`, dask-jobqueue, k8s
    client.register_plugin(GradingSetup(settings))     # grader.worker: once per worker (and per replacement worker)
    future = client.submit(grade_task, task, pure=False)   # grader.worker -> grader.results.ExerciseResult

This module is the grading machine's side: the batch's Settings, its Tasks, and connecting. It imports no Dask
until connect() runs, so that a fresh cluster's forkserver, the critical path of a small class, starts before this
process spends ~1.2 s importing distributed. What runs on the workers is grader.worker. A LocalCluster's workers are
forked from one process that imported what grading needs once (grader.worker_preload). The client process needs
neither torch nor the graders: every record a worker returns carries its points.
A task carries the submitted file's bytes and its result comes back as data: workers need no shared filesystem,
only the same llmstudy installed and, for the sandbox, root (or user namespaces). Dask pickles tasks and results
between our own trusted processes; learner values never travel this way (they cross from the sandbox as
grader.codec data). A task whose worker dies is retried on another worker at most ALLOWED_FAILURES times (the
scheduler's `distributed.scheduler.allowed-failures`, set here for a LocalCluster), then its future raises
KilledWorker.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

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


def stale_workers(client) -> tuple[int, int]:
    """(how many, of how many) workers of an existing cluster imported other grading code than this process has: a
    warm cluster (grader.warm) started before a grader was edited, or a machine with another llmstudy."""
    ours = code_digest()
    from llmstudy.grader.worker import imported_code
    theirs = client.run(imported_code)                  # {worker address: digest or None}
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
    # worker_preload first: it starts the zygote template before importing anything (distributed included)
    multiprocessing.get_context("forkserver").set_forkserver_preload(["llmstudy.grader.worker_preload", "distributed"])
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
