"""Trusted side of the sandbox: start a zygote, fork a child per submission, call the learner's functions by value,
and serve the learner's model calls from the grader's own copy of the model.

    worker = SandboxWorker(device="cpu", sandboxed=True)            # starts the zygote (torch, tokenizers), once
    sub = worker.open("attention", source, "02_attention.ipynb")    # fork a child, run the learner's code in it
    grader.runner.grade("attention", sub)                            # hidden tests call sub.<fn>(...) by value
    sub.close()                                                      # kill the child and everything it started

Everything the child sends is decoded strictly here: a result frame is a value (grader.codec's result kinds), or the
qualified names of the exception it raised plus a message, or a problem (no such function, an unreadable value);
a model frame asks for a forward pass, which grader/model_server.py checks and computes; anything else is a
ProtocolError that costs that one call (the child is stopped, the next call gets a fresh one), never the batch.
Verdicts are computed only in this process: whether an input was changed in place is read from shared memory here.
Only the child's "ready" frame, sent before learner code runs, can report a failure of our side (SandboxBroken).
"""
from __future__ import annotations

import mmap
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from llmstudy.grader import codec
from llmstudy.grader.model_server import ModelRequestError, ModelServer
from llmstudy.grader.sandbox.isolation import Limits, mounted_views
from llmstudy.grader.sandbox.launch import TOKENIZERS, Zygote, at_eof, launch, loadable
from llmstudy.grader.sandbox.protocol import ProtocolError, recv_frame, send_frame
from llmstudy.grader.submission import LearnerError, Raised, Submission, SubmissionTimeout

QUALNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.<>]{0,200}")


class SandboxBroken(RuntimeError):
    """Our side failed (zygote died, sandbox setup failed): an internal error, not the learner's."""



class SandboxWorker:
    """One zygote process, owned by one trusted grading process; grades one submission at a time."""

    def __init__(self, device: str = "cpu", sandboxed: bool = True, limits: Limits = Limits(),
                 tokenizers: tuple[str, ...] = TOKENIZERS, hide: tuple[str, ...] = (),
                 start_timeout: float = 900.0, wait: bool = True, preload: tuple[str, ...] | None = None,
                 zygote: Zygote | None = None):
        """Start the zygote, or configure `zygote` (one started ahead, grader/sandbox/launch.py); with wait=False
        return at once (it starts in the background until first used). `preload` is accepted for old callers and
        ignored: the zygote holds no models any more. Raises OSError if a given zygote is gone."""
        from llmstudy import models
        self.device, self.sandboxed, self.limits = device, sandboxed, limits
        if "smollm2" in tokenizers and not models.smollm2_cache_built() and \
                any(i.name == "smollm2" and i.files for i in models.available()):
            models.load("smollm2", "cpu")    # builds the fp32 cache once per machine: its tokenizer is bound below
        tokenizers = loadable(tokenizers)
        zygote = zygote or launch(tokenizers)
        self._proc, self._log, self._control = zygote.proc, zygote.log, zygote.control
        config = {"device": device, "sandboxed": sandboxed, "limits": asdict(limits), "tokenizers": list(tokenizers),
                  "parent": zygote.parent, "views": mounted_views(device, tuple(hide)) if sandboxed else None}
        send_frame(self._control, {"op": "config", **config})
        self._start_timeout = start_timeout
        self.info: dict | None = None
        if wait:
            self.wait_ready()

    def wait_ready(self) -> dict:
        """Block until the zygote has loaded everything; its pid, the children's uid and the mode."""
        if self.info is None:
            self._request(None, timeout=self._start_timeout)      # the zygote's "ready" (or its error)
            self.info = self._request({"op": "ping"}, timeout=30)
        return self.info

    def _request(self, message: dict | None, fds: list[int] = (), timeout: float = 60.0) -> dict:
        try:
            if message is not None:
                send_frame(self._control, message, fds=fds)
            reply, _, _ = recv_frame(self._control, deadline=time.monotonic() + timeout)
        except EOFError:
            raise SandboxBroken(f"the sandbox worker exited{self._log_tail()}") from None
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise SandboxBroken(f"the sandbox worker stopped answering ({type(exc).__name__}){self._log_tail()}") \
                from None
        if "error" in reply:
            raise SandboxBroken(reply["error"])
        return reply
    def _log_tail(self) -> str:
        """The zygote's last words (its stderr), to say why it stopped."""
        try:
            self._log.seek(0)
            text = self._log.read()[-1500:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f": {text}" if text else ""

    def alive(self) -> bool:
        if self._proc is None:               # started by another process: alive while it keeps its channel open
            return not at_eof(self._control)
        return self._proc.poll() is None

    def open(self, exercise: str, source: str, filename: str) -> "SandboxSubmission":
        """A fresh child running `source`; raises LearnerError/SubmissionTimeout if importing it fails or hangs."""
        return SandboxSubmission(self, exercise, source, filename)

    def spawn(self, source: str, filename: str) -> "_Child":
        self.wait_ready()
        sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        read_end, write_end = os.pipe()
        try:
            reply = self._request({"op": "spawn"}, fds=[theirs.fileno(), write_end])
        finally:
            theirs.close()
            os.close(write_end)
        child = _Child(self, reply["pid"], sock, _Drain(read_end, self.limits.output_kb * 1024))
        try:
            header, _, _ = recv_frame(sock, deadline=time.monotonic() + 60)
        except (TimeoutError, EOFError, OSError, ProtocolError) as exc:
            header = {"error": f"no word from a new sandboxed process ({type(exc).__name__})"}
        if header.get("ready") is not True:
            child.stop()
            raise SandboxBroken(str(header.get("error", "a new sandboxed process did not start")))
        send_frame(sock, {"op": "load", "source": source, "filename": filename})
        return child

    def kill(self, pid: int) -> str:
        return self._request({"op": "kill", "pid": pid})["status"]

    def close(self) -> None:
        if self._proc is None:
            self._close_adopted()
            return
        try:
            self._control.close()
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()

    def _close_adopted(self) -> None:
        """A zygote this process did not start (forked by a template, grader/sandbox/launch.py) can't be waited
        for: tell it we are done and wait until it has closed its end (it reaps its children first)."""
        try:
            self._control.shutdown(socket.SHUT_WR)
            self._control.settimeout(10)
            while self._control.recv(1 << 16):
                pass
        except OSError:                      # stuck: it is ours to stop
            pid = (self.info or {}).get("pid")
            if type(pid) is int:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._control.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Drain(threading.Thread):
    """Reads a child's stdout/stderr to the end, keeping the first `keep` bytes (output never affects a score)."""

    def __init__(self, fd: int, keep: int):
        super().__init__(daemon=True)
        self.fd, self.keep, self.kept, self.dropped = fd, keep, bytearray(), 0
        self.start()

    def run(self):
        with os.fdopen(self.fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                room = self.keep - len(self.kept)
                self.kept += chunk[:max(room, 0)]
                self.dropped += max(len(chunk) - max(room, 0), 0)


@dataclass
class _Child:
    worker: SandboxWorker
    pid: int
    sock: socket.socket
    output: _Drain
    status: str = field(default="")
    _process: object = field(default=None, repr=False)

    def cpu_seconds(self) -> float | None:
        """CPU time the child's process (all its threads) has used so far, or None where it can't be read."""
        import psutil
        try:
            if self._process is None:
                self._process = psutil.Process(self.pid)
            times = self._process.cpu_times()
        except (psutil.Error, OSError):
            return None
        return times.user + times.system

    def stop(self) -> str:
        if not self.status:
            self.status = self.worker.kill(self.pid)
            self.sock.close()
            self.output.join(timeout=5)
        return self.status




class _CallClock:
    """When one call into the child runs out of time: once the child's process has used `cpu_limit` seconds of CPU
    since the call began, or at `wall_deadline` (monotonic), whichever comes first. CPU time, not wall time, so that
    an honest call isn't timed out by other work on the machine (another worker's child, a cold page cache at
    start-up); the wall deadline still bounds a call that sleeps, blocks, or keeps the model busy. Where the child's
    CPU time can't be read, wall time stands in for it."""

    def __init__(self, child: _Child, cpu_limit: float, wall_deadline: float):
        self.child, self.cpu_limit, self.wall_deadline = child, cpu_limit, wall_deadline
        self.start, self.cpu_start = time.monotonic(), child.cpu_seconds()
        self.over_cpu = False

    def _cpu_used(self, now: float) -> float:
        current = self.child.cpu_seconds() if self.cpu_start is not None else None
        return now - self.start if current is None else current - self.cpu_start

    def wait_for(self, sock: socket.socket) -> None:
        """Return once `sock` has something to read; TimeoutError when the call is out of time first."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        check = min(self.start + self.cpu_limit, self.wall_deadline)   # CPU time can't run ahead of wall time
        while True:
            left = check - time.monotonic()
            if left > 0 and poller.poll(left * 1000):
                return
            now = time.monotonic()
            if now >= self.wall_deadline:
                raise TimeoutError
            used = self._cpu_used(now)
            if used >= self.cpu_limit:
                self.over_cpu = True
                raise TimeoutError
            check = min(now + max(self.cpu_limit - used, 0.01), self.wall_deadline)


class SandboxSubmission(Submission):
    """The learner's functions in an isolated child. Same interface as grader.submission.InProcessSubmission."""

    def __init__(self, worker: SandboxWorker, exercise: str, source: str, filename: str):
        self.worker, self.exercise = worker, exercise
        self._source, self._filename = source, filename
        self._child: _Child | None = None
        self._seq = 0
        self.server = ModelServer(worker.device)   # this submission's model calls; its prefix cache dies with it
        self.budget_left = worker.limits.budget
        self.timeouts = 0                # calls that ran out of time
        self.deaths = 0                  # calls during which the child died or sent something malformed
        self.output = b""                # what the learner's code printed first (bounded), for diagnostics
        self.broken: str | None = None   # set when our side failed during a call (not the learner's fault)
        self._start()

    def _start(self) -> None:
        try:
            self._child = self.worker.spawn(self._source, self._filename)
        except SandboxBroken as exc:
            self.broken = str(exc)
            raise
        try:
            kind, value = self._exchange("importing your code", None)
        except BaseException:
            self._stop()                 # a child whose import failed serves nothing
            raise
        if kind == "raised":
            self._stop()
            raise LearnerError(value.describe("your code at import"))

    def _invoke(self, fn: str, args: tuple, kwargs: dict, watch: bool) -> tuple[str, Any, list[str]]:
        import torch
        where = f"{fn}()"
        if self.budget_left <= 0:
            raise SubmissionTimeout(f"not run: your code used up its total time of {self.worker.limits.budget:g} s")
        if self._child is None:
            try:
                self._start()
            except LearnerError as exc:
                raise LearnerError(f"{where} could not run: {exc}") from None
        named = {f"argument {i + 1}": a for i, a in enumerate(args)} | dict(kwargs)
        watched = {name: t.detach().cpu().contiguous() for name, t in named.items()
                   if watch and type(t) in (torch.Tensor, torch.nn.Parameter) and t.numel() > 0}
        fds = [_shared_copy(t) for t in watched.values()]
        try:
            self._seq += 1
            header = {"op": "call", "fn": fn, "seq": self._seq, "shared": list(watched)}
            try:
                send_frame(self._child.sock, header, codec.encode((list(args), kwargs)), fds=fds)
            except OSError:              # it exited after its last answer (e.g. a timer calling os._exit)
                self.deaths += 1
                raise LearnerError(f"the process running your code had exited before {where} ({self._stop()})") \
                    from None
            kind, value = self._exchange(where, self._seq)
            changed = [name for (name, before), fd in zip(watched.items(), fds) if _changed(before, fd)]
        finally:
            for fd in fds:
                os.close(fd)
        return kind, value, changed

    def _exchange(self, where: str, seq: int | None) -> tuple[str, Any]:
        """Serve the child's model calls until its answer to the last request; on timeout, death or a malformed frame
        stop it (the next call respawns). ("value", v) or ("raised", Raised)."""
        limits = self.worker.limits
        wall = min(limits.wall_factor * limits.call_timeout, max(self.budget_left, 0.0))
        start = time.monotonic()
        clock = _CallClock(self._child, limits.call_timeout, start + wall)
        try:
            while True:
                clock.wait_for(self._child.sock)
                header, blob, fds = recv_frame(self._child.sock, deadline=start + wall)
                for fd in fds:           # a child has no reason to send descriptors
                    os.close(fd)
                if header.get("seq") != seq:
                    raise ProtocolError("an answer arrived out of order")
                if header.get("op") == "model":
                    self._serve_model(header, blob)
                    continue
                if header.get("op") != "result":
                    raise ProtocolError(f"an unknown message {str(header.get('op'))[:40]!r}")
                return self._result(header, blob, where)
        except TimeoutError:
            self.timeouts += 1
            self._stop()
            if clock.over_cpu:
                raise SubmissionTimeout(f"{where} used {limits.call_timeout:g} s of CPU time without finishing "
                                        "(an endless loop?)") from None
            if wall < limits.wall_factor * limits.call_timeout:    # the budget, not the call's own limit, ran out
                raise SubmissionTimeout(f"{where} did not finish before your code used up its total time of "
                                        f"{limits.budget:g} s (an endless loop?)") from None
            raise SubmissionTimeout(f"{where} did not finish within {wall:g} s (waiting on something, or an "
                                    "endless loop?)") from None
        except (EOFError, OSError, ProtocolError, struct.error) as exc:
            self.deaths += 1
            status = self._stop()
            detail = f"{exc}" if isinstance(exc, ProtocolError) else status
            raise LearnerError(f"the process running your code died during {where} ({detail})") from None
        finally:
            self.budget_left -= time.monotonic() - start

    def _result(self, header: dict, blob: bytes, where: str) -> tuple[str, Any]:
        ok = header.get("ok")
        if ok is True:
            try:
                return "value", codec.decode(blob) if blob else None
            except codec.UnsupportedValue as exc:
                raise ProtocolError(f"{where} returned a value the grader could not read: {exc}") from None
        if ok is not False:
            raise ProtocolError("an answer without a status")
        if "raised" in header:
            classes, message = header["raised"], header.get("message", "")
            if type(classes) is not list or not 0 < len(classes) <= 32 or type(message) is not str or \
                    not all(type(c) is str and QUALNAME.fullmatch(c) for c in classes):
                raise ProtocolError("a malformed exception report")
            return "raised", Raised(tuple(classes), message[:300])
        problem = header.get("problem")
        if problem == "missing":
            raise LearnerError(f"no function named {where[:-2]}() was found; define it with exactly this name")
        if type(problem) is str:
            raise LearnerError(problem[:500])
        raise ProtocolError("a malformed answer")

    def _serve_model(self, header: dict, blob: bytes) -> None:
        """One forward pass (or the config) for the learner's model proxy; the logits go back in shared memory."""
        sock = self._child.sock
        what, name, past = header.get("what"), header.get("name"), header.get("past")
        if type(name) is not str or (past is not None and type(past) is not int) or what not in ("forward", "info"):
            raise ProtocolError("a malformed model call")
        if what == "info":
            try:
                send_frame(sock, {"op": "model_reply", "ok": True}, codec.encode(self.server.info(name)))
            except ModelRequestError as exc:
                send_frame(sock, {"op": "model_reply", "ok": False, "message": str(exc)})
            return
        shared = _SharedTensor()
        try:
            try:
                ids = codec.decode(blob, allow=frozenset({"tensor"}))
            except codec.UnsupportedValue as exc:
                raise ModelRequestError(f"input_ids could not be read: {exc}") from None
            logits, rows, handle = self.server.forward_rows(name, ids, past, out=shared.allocate)  # [U, L, V]
            reply = {"op": "model_reply", "ok": True, "shape": list(logits.shape), "handle": handle}
            if rows is not None:
                reply["rows"] = rows.tolist()             # row b is logits[rows[b]]: the child expands them
            del logits                   # the mapping closes only once no tensor over it is left
            shared.unmap()
            send_frame(sock, reply, fds=[shared.fd])
        except ModelRequestError as exc:
            send_frame(sock, {"op": "model_reply", "ok": False, "message": str(exc)})
        finally:
            shared.unmap()
            os.close(shared.fd)

    def _stop(self) -> str:
        child, self._child = self._child, None
        if child is None:
            return ""
        try:
            status = child.stop()
        except SandboxBroken as exc:
            self.broken = str(exc)
            raise
        if len(self.output) < self.worker.limits.output_kb * 1024:
            self.output += bytes(child.output.kept)
        return status

    def close(self) -> None:
        self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SharedTensor:
    """A memfd the child maps to read a tensor without a copy through the socket: allocate(shape) gives a tensor
    over it to write into, unmap() releases this side's mapping (the fd stays open to be sent)."""

    def __init__(self):
        self.fd = os.memfd_create("llmstudy-tensor")
        self._memory = None

    def allocate(self, shape, dtype=None):
        import torch
        dtype = dtype or torch.float32
        count = 1
        for n in shape:
            count *= n
        size = count * torch.empty((), dtype=dtype).element_size()
        os.ftruncate(self.fd, max(size, 1))
        if not count:
            return torch.empty(shape, dtype=dtype)
        self._memory = mmap.mmap(self.fd, size)
        return torch.frombuffer(self._memory, dtype=dtype, count=count).view(shape)

    def unmap(self) -> None:
        if self._memory is not None:
            try:
                self._memory.close()
                self._memory = None
            except BufferError:    # a tensor over it is still referenced (an exception's frame): freed with it
                pass


def _shared_copy(t) -> int:
    """A memfd holding t's bytes (the child maps it: no copy through the socket)."""
    import torch
    shared = _SharedTensor()
    view = shared.allocate(tuple(t.shape), t.dtype)
    with torch.no_grad():
        view.copy_(t)                    # one pass, whatever t's strides
    del view                             # the buffer must be released before the mapping can close
    shared.unmap()
    return shared.fd


def _changed(before, fd: int) -> bool:
    import torch
    raw = bytearray(os.pread(fd, before.numel() * before.element_size(), 0))
    after = torch.frombuffer(raw, dtype=torch.uint8).view(before.dtype).reshape(before.shape)
    return not torch.equal(after.isnan(), before.isnan()) or not torch.equal(after.nan_to_num(), before.nan_to_num())
