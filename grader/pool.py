"""Where grading tasks run, behind one small interface: `Pool.imap_unordered(fn, items)`.

    pool = LocalPool(workers=8, setup=batch.worker_setup, setup_args=(settings,))
    for item, result in pool.imap_unordered(batch.grade_task, tasks):   # results as they finish, any order
        ...
    pool.close()

`setup(*setup_args)` runs once in each worker process before its first task; `fn(item)` then runs there with
whatever setup left behind (for grading: a pre-loaded sandbox zygote). `fn` must be a module-level function and
`fn`, the items and the results picklable (workers are our own trusted processes; learner values never travel here
as pickles). A result is whatever `fn` returned, or the exception it raised (as a value), or WorkerLost.

A Dask backend implements the same two methods for classes larger than one machine (dask-jobqueue for Slurm,
dask-kubernetes): `setup` becomes a WorkerPlugin's setup(), `imap_unordered` becomes
`distributed.as_completed(client.map(fn, items, pure=False))`. Each Dask worker process must run as root on Linux
for the sandbox (or the batch must allow running unsandboxed).
"""
from __future__ import annotations

import pickle
import queue
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")
_LEN = struct.Struct("<Q")


class WorkerLost(RuntimeError):
    """The worker process running this item died (on every try), e.g. killed by the OOM killer."""


class Pool(Protocol):
    def imap_unordered(self, fn: Callable[[T], Any], items: Iterable[T]) -> Iterator[tuple[T, Any]]: ...

    def close(self) -> None: ...


def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj)
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv(sock: socket.socket) -> Any:
    def exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)
    (n,) = _LEN.unpack(exact(_LEN.size))
    return pickle.loads(exact(n))


class _Worker:
    """One `python -m grader.pool FD` process (started fresh, so it never inherits the caller's state)."""

    def __init__(self, setup, setup_args):
        ours, theirs = socket.socketpair()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "grader.pool", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log)
        theirs.close()
        self.sock = ours
        _send(self.sock, (setup, setup_args))

    def run(self, fn, item) -> tuple[bool, Any]:
        _send(self.sock, (fn, item))
        return _recv(self.sock)

    def log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-800:].decode(errors="replace").strip()

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class LocalPool:
    """`workers` worker processes on this machine. An item whose worker dies is retried once on a fresh worker."""

    def __init__(self, workers: int, setup: Callable[..., None] | None = None, setup_args: tuple = (),
                 retries: int = 1):
        self.workers, self._setup, self._setup_args, self._retries = workers, setup, setup_args, retries
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker(self._setup, self._setup_args)

    def imap_unordered(self, fn: Callable[[T], Any], items: Iterable[T]) -> Iterator[tuple[T, Any]]:
        todo: queue.Queue = queue.Queue()
        done: queue.Queue = queue.Queue()
        items = list(items)
        for item in items:
            todo.put((item, 0))

        def feed():
            worker = None
            while True:
                try:
                    item, tries = todo.get_nowait()
                except queue.Empty:
                    break
                try:
                    worker = worker or self._take()
                    ok, value = worker.run(fn, item)
                    done.put((item, value))
                except (EOFError, OSError, pickle.UnpicklingError) as exc:
                    tail = worker.log_tail() if worker else ""
                    if worker:
                        worker.close()
                    worker = None
                    if tries < self._retries:
                        todo.put((item, tries + 1))
                    else:
                        done.put((item, WorkerLost(f"the grading process died while grading this submission "
                                                   f"({type(exc).__name__}){': ' + tail[-300:] if tail else ''}")))
            if worker is not None:
                with self._lock:
                    self._idle.append(worker)

        threads = [threading.Thread(target=feed, daemon=True) for _ in range(min(self.workers, len(items)))]
        for thread in threads:
            thread.start()
        for _ in items:
            yield done.get()
        for thread in threads:
            thread.join()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _worker_main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        setup, setup_args = _recv(sock)
        if setup is not None:
            setup(*setup_args)
        while True:
            fn, item = _recv(sock)
            try:
                reply = (True, fn(item))
            except Exception as exc:  # noqa: BLE001 - handed back as the item's result
                reply = (False, exc)
            try:
                _send(sock, reply)
            except (pickle.PicklingError, TypeError, AttributeError):
                _send(sock, (False, RuntimeError(repr(reply[1])[:1000])))
    except EOFError:
        pass


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]))
