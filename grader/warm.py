"""Grader side: a local grading cluster kept warm between `llmstudy grade` runs (`llmstudy serve`).

    llmstudy serve --workers 2            # blocks; prints tls://127.0.0.1:8786
    llmstudy grade CLASS                  # meanwhile, in another terminal: graded on it (or --scheduler ADDRESS)

Every `llmstudy grade` without --scheduler starts its own LocalCluster, and about 10 s of a 2-core machine go to that
start-up (importing torch, transformers and the graders in the workers' forkserver, the sandbox template, the first
model load) before the first record: a third of a 16-student class, nearly all of one late submission. `serve`
starts the same cluster once (grader.cluster.connect: forked workers, the sandbox's zygote template) and keeps it;
each batch sent to it then registers its own GradingSetup (a fresh zygote per worker, forked from the template in
milliseconds), grades, and unregisters it, and the workers keep their imports, models and forward memo.

Found, not configured. While it runs, every `llmstudy grade` of the same user and model cache without --workers or
--scheduler grades on it and says so in one line (running() finds it from its credentials file), the way a build
tool's daemon is picked up: the cluster is this machine's, and the grades are byte for byte a fresh cluster's
(tested). One that can't take the batch (its graders are stale, it stopped uncleanly) is named in one line and a
fresh cluster grades instead; --workers N always starts a fresh one.

Trust. A Dask scheduler runs whatever pickled function a client sends it, as the user who started it. So this one
listens on 127.0.0.1 only and speaks TLS with a certificate made for this run (distributed's Security.temporary);
only a process that can read the credentials file (mode 0600, in the model cache folder: the same user) can connect.
Learner code never reaches it either way: it runs in the workers' sandboxed children, which have no network.

Stale graders. The workers import the graders once, when the cluster starts, and record the digest of what they
imported (grader.worker_preload.IMPORTED_CODE). Before registering a batch, the client compares it with its own
(grader.cluster.check_code), so editing a grader (or upgrading llmstudy) while a warm cluster runs never gets old
verdicts: with --scheduler, a one-line error saying to restart it; found by itself, a fresh cluster instead.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORT = 8786
FILE = "warm-cluster.json"


class WarmClusterError(RuntimeError):
    """The warm cluster can't be started or reached; the message says what to do."""


def credentials_path() -> Path:
    from llmstudy import models
    return models.cache_dir() / FILE


def serve(workers: int, port: int = DEFAULT_PORT, ready=print) -> None:
    """Start the warm cluster, call ready(address) once it takes batches, and block until SIGINT or SIGTERM; then
    close it and remove the credentials file."""
    # Before any thread starts (threads inherit it): SIGINT blocked, so that only the wait below takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    from distributed.security import Security

    from llmstudy.grader.cluster import OWN_GROUP_ENV, connect
    path = credentials_path()
    if (found := _read(path)) and _alive(found.get("pid")):
        raise WarmClusterError(f"a warm cluster is already running at {found['address']} (pid {found['pid']}); "
                               "grade with it, or stop it first (Ctrl-C where it runs)")
    path.unlink(missing_ok=True)                        # left by one that was killed
    try:
        security = Security.temporary()
    except ImportError:
        raise WarmClusterError("the warm cluster needs the `cryptography` package for its TLS certificate: "
                               "pip install cryptography") from None
    # Ctrl-C in a terminal signals the whole foreground process group; the workers, each dying mid-task with a
    # traceback, must not get it: their forkserver puts itself, and so them, in a process group of its own.
    os.environ[OWN_GROUP_ENV] = "1"
    try:
        client, cluster = connect(None, workers=workers, security=security, port=port, device="auto")
    except OSError as exc:
        raise WarmClusterError(f"can't listen on {HOST}:{port} ({exc.strerror or exc}); pick another --port") from None
    finally:
        os.environ.pop(OWN_GROUP_ENV, None)          # read once, by the forkserver this process started
    try:
        address = cluster.scheduler_address
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise WarmClusterError(f"another `llmstudy serve` started meanwhile ({path}); grade with that one") \
                from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"address": address, "pid": os.getpid(), "workers": workers, "ca": security.tls_ca_file,
                       "cert": security.tls_client_cert, "key": security.tls_client_key}, f)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))   # runs between the waits below
        try:
            ready(address)
            while not stop and signal.sigtimedwait({signal.SIGINT}, 1.0) is None:
                pass
        finally:
            path.unlink(missing_ok=True)
    finally:
        client.close()
        cluster.close()


def running() -> str | None:
    """The address of this user's warm cluster, if its credentials file names a `llmstudy serve` still alive."""
    found = _read(credentials_path())
    if found and _alive(found.get("pid")) and isinstance(found.get("address"), str):
        return found["address"]
    return None


def security_for(address: str):
    """distributed Security for a warm cluster's tls:// address, from its credentials file."""
    from distributed.security import Security
    path = credentials_path()
    running = _read(path)
    if not running or running.get("address") != address:
        where = f" (it names {running['address']})" if running else ""
        raise WarmClusterError(f"no credentials for {address} in {path}{where}; start the cluster with "
                               "`llmstudy serve`, or grade without --scheduler")
    return Security(tls_ca_file=running["ca"], tls_client_cert=running["cert"], tls_client_key=running["key"],
                    require_encryption=True)


def _read(path: Path) -> dict | None:
    """The credentials file's contents; None if there is none or it can't be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
