"""Runs untrusted submissions: a pre-loaded worker ("zygote") forks one fresh, isolated child per submission.

    worker = SandboxWorker(device="cpu", sandboxed=True)            # starts the zygote: torch + models, once
    sub = worker.open("attention", source, "02_attention.ipynb")    # fork a child, run the learner's code in it
    grader.runner.grade("attention", sub)                            # hidden tests call sub.<fn>(...) by value
    sub.close()                                                      # kill the child and everything it started

Three processes, two trust levels:
  trusted grader (this module's SandboxWorker/SandboxSubmission, pytest, solutions/) -- never runs learner code;
  zygote (`python -m grader.sandbox`, root) -- imports torch, transformers, grader.codec/submission/harness and
      llmstudy.models and loads the models, but never `solutions` or `grader.tests`; it forks children and never
      runs learner code itself;
  child (one per submission, and a fresh one after each timeout or crash) -- runs the learner's code and serves
      calls. Values cross as grader.codec blobs (JSON + safetensors) in length-limited frames; nothing from the
      child is ever unpickled.

What holds in the child (Linux, grader running as root; `isolation_problem()` says when it doesn't):
  - PID namespace: the child is PID 1 of its own namespace; killing it kills everything it started, daemons too.
  - Network namespace: no interfaces but a downed loopback, so no connection goes anywhere.
  - Mount namespace + pivot_root into a fresh tmpfs root holding read-only binds of only what Python needs
    (/usr, /etc, the Python install, the venv, llmstudy/, the model cache); solutions/, grader/, the project's
    .git, submissions and outputs are not there (and are covered by empty mounts if they live inside a bound tree).
    /tmp is a small private tmpfs and the working directory; /proc shows only the child's own processes.
  - IPC and UTS namespaces; a new session; an unprivileged uid/gid per zygote (no groups); PR_SET_NO_NEW_PRIVS;
    rlimits on address space, CPU seconds, processes, file size, open files and core dumps; nice 10.
  - A minimal environment (no instructor variables); stdout/stderr go to a pipe the grader drains and truncates.
Everything a child says is the learner's: only its "ready" frame, sent before any learner code runs, can report a
failure of our side. A harness verdict computed in the child could be forged there, so `modified_inputs` is
observed from the grader's side instead (the tensor arguments live in shared memory the grader reads back).
Without isolation (not root, not Linux, or namespaces unavailable) `sandboxed=False` keeps only the separate
process, its own session (killed as a process group), a temp working directory, the uid drop when root, and the
rlimits that the OS enforces; callers must ask for that explicitly (`--allow-unsandboxed`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grader import codec
from grader.submission import LearnerError, Submission, SubmissionTimeout, describe_exception

ROOT = Path(__file__).resolve().parent.parent
HEADER = struct.Struct("<IQ")          # json length, blob length
MAX_JSON = 1 << 20                     # a reply's JSON part (status and message)
MAX_BLOB = 256 << 20                   # a returned value; far above any exercise's tensors
UID_BASE = 1 << 30                     # child uid = UID_BASE + zygote pid: unused by real accounts, unique per zygote


class SandboxUnavailable(RuntimeError):
    """Isolation can't be set up here; the message says why and how to proceed."""


class SandboxBroken(RuntimeError):
    """Our side failed (zygote died, sandbox setup failed): an internal error, not the learner's."""


@dataclass(frozen=True)
class Limits:
    call_timeout: float = 20.0         # wall seconds per call into the learner's code (and for the import)
    budget: float = 200.0              # wall seconds of learner code per submission, all calls together
    # Per process; a child needs one task (measured: torch and the tokenizers start no threads with these settings),
    # so processes x memory_mb bounds what a forking memory bomb can take (16 GB). A per-child cgroup would make
    # it 1 GB in total; that needs a delegated cgroup subtree, which this grader doesn't assume.
    memory_mb: int = 1024              # address space each process may add on top of the zygote's (RLIMIT_AS)
    cpu_seconds: int = 300             # CPU seconds per child process (RLIMIT_CPU)
    processes: int = 16                # tasks (processes + threads) of the child's uid (RLIMIT_NPROC)
    file_mb: int = 16                  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 256              # RLIMIT_NOFILE
    tmp_mb: int = 64                   # size of its private /tmp
    output_kb: int = 64                # stdout+stderr kept; the rest is read and dropped


# --- isolation primitives (Linux, via libc; Python 3.11 has no os.unshare/mount) ---------------------------------
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _ok(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _ok(_c().unshare(flags), "unshare")


def _setns(fd: int, nstype: int) -> None:
    _ok(_c().setns(fd, nstype), "setns")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _ok(_c().mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {dst}")


def _prctl(option: int, arg: int) -> None:
    _ok(_c().prctl(option, arg, 0, 0, 0), f"prctl {option}")


def _pivot_root(new_root: str) -> None:
    """Make new_root the root and detach the old one (the pivot_root(".", ".") idiom from pivot_root(2))."""
    import platform
    os.chdir(new_root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is not None and _c().syscall(number, b".", b".") == 0:
        _ok(_c().umount2(b".", MNT_DETACH), "umount old root")
    else:   # unknown architecture or rootfs (initramfs): move the mount over / and chroot into it
        _mount(new_root, "/", None, 8192)   # MS_MOVE
        os.chroot(".")
    os.chdir("/")


def isolation_problem() -> str | None:
    """None if children can be fully isolated here; else one line saying why not."""
    if not sys.platform.startswith("linux"):
        return f"namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the sandbox needs root (namespaces, mounts, an unprivileged uid for learner code)"
    try:
        pid = os.fork()
    except OSError as exc:
        return f"can't fork a probe process: {exc}"
    if pid == 0:   # probe: the same steps a child takes, then exit
        code = 0
        try:
            _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            with tempfile.TemporaryDirectory() as tmp:
                _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
                _ok(_c().umount2(tmp.encode(), MNT_DETACH), "umount")
        except OSError as exc:
            code = {1: 11, 13: 13, 22: 22, 28: 28}.get(exc.errno, 10)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    why = {11: "operation not permitted", 13: "permission denied", 22: "invalid argument",
           28: "namespace limit reached"}.get(code, f"failed with code {code}")
    return f"can't create namespaces or mounts here ({why}; in a container, grant CAP_SYS_ADMIN or use a VM)"


def python_readable_by_others() -> bool:
    """Whether an unprivileged uid can use this Python (every folder above the installs is o+x). Without the
    sandbox's own root there is no other way to give it the files, so the uid drop is skipped when this is False."""
    import stat
    for top in {sys.prefix, sys.base_prefix, str(ROOT)}:
        path = Path(top).resolve()
        for folder in (path, *path.parents):
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
    return True


# --- framing: [json length][blob length][json][blob] --------------------------------------------------------------
class ProtocolError(Exception):
    pass


def send_frame(sock: socket.socket, header: dict, blob: bytes = b"") -> None:
    data = json.dumps(header).encode()
    sock.sendall(HEADER.pack(len(data), len(blob)) + data + blob)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except socket.timeout:
            raise TimeoutError from None
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, deadline: float | None = None, max_blob: int = MAX_BLOB) -> tuple[dict, bytes]:
    """One frame; TimeoutError past the deadline, EOFError if the peer is gone, ProtocolError on anything malformed."""
    return _recv_rest(sock, _recv_exact(sock, HEADER.size, deadline), deadline, max_blob)


def _recv_frame_with_fds(sock: socket.socket) -> tuple[dict, bytes, list[int]]:
    """The child's receive: a frame plus any file descriptors sent with it (shared-memory arguments)."""
    first, fds, _, _ = socket.recv_fds(sock, HEADER.size, 16)
    if not first:
        raise EOFError
    head = first + _recv_exact(sock, HEADER.size - len(first), None)
    header, blob = _recv_rest(sock, head, None, MAX_BLOB)
    return header, blob, fds


def _recv_rest(sock: socket.socket, head: bytes, deadline: float | None, max_blob: int) -> tuple[dict, bytes]:
    n_json, n_blob = HEADER.unpack(head)
    if n_json > MAX_JSON or n_blob > max_blob:
        raise ProtocolError(f"a message of {n_json + n_blob} bytes is over the limit of {max_blob} bytes")
    raw = _recv_exact(sock, n_json, deadline)
    blob = _recv_exact(sock, n_blob, deadline) if n_blob else b""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("a message was not valid JSON") from None
    if type(header) is not dict:
        raise ProtocolError("a message was not a JSON object")
    return header, blob


def ctl_send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    """Control messages between the grader and the zygote: one JSON line each, file descriptors riding along."""
    data = json.dumps(message).encode() + b"\n"
    sent = socket.send_fds(sock, [data], list(fds))
    sock.sendall(data[sent:])


def ctl_recv(sock: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """One control message (None at EOF). Request and reply alternate, so a read never runs into the next one."""
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, max_fds)
    while data and not data.endswith(b"\n"):
        more = sock.recv(1 << 16)
        if not more:
            break
        data += more
    return (json.loads(data) if data else None), list(fds)


# --- trusted side -----------------------------------------------------------------------------------------------
def _zygote_env() -> dict[str, str]:
    """Only what Python and the model loader need; instructor secrets (tokens, keys) never reach learner code."""
    from llmstudy import models
    keep = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "TMPDIR",
            "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTORCH_NVML_BASED_CUDA_CHECK="1", **{models.CACHE_ENV: str(models.cache_dir())})
    return env


def _mounted_views(device: str, hide: tuple[str, ...]) -> dict:
    """What the child's root contains: read-only binds, top-level symlinks, and paths to cover inside the binds."""
    import llmstudy
    from llmstudy import models

    bind = ["/usr", "/etc", sys.prefix, sys.base_prefix, sys.exec_prefix,
            str(Path(llmstudy.__file__).resolve().parent), str(models.cache_dir())]
    for info in models.available():
        if info.files is not None:
            bind.append(str(info.files))
    links = {}
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            links[top] = os.readlink(top)
        elif os.path.isdir(top):
            bind.append(top)
    devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
    if device.startswith("cuda"):
        devices += sorted(str(p) for p in Path("/dev").glob("nvidia*"))
        bind.append("/sys")
    # Bind each tree at the path Python knows it by (abspath; a symlinked venv keeps working), outermost only.
    bind = sorted({os.path.abspath(p) for p in bind if os.path.exists(p)})
    bind = [p for p in bind if not any(p != q and _under(p, q) for q in bind)]
    secret = {str(ROOT / "solutions"), str(ROOT / "grader"), str(ROOT / ".git"), *hide}
    import importlib.util
    for package in ("solutions", "grader"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            secret.update(spec.submodule_search_locations)
    # A secret that lies inside a bound tree (e.g. solutions/ installed into site-packages) gets covered there,
    # compared by real paths so that a link in either path can't uncover it.
    cover = set()
    for s in (os.path.realpath(p) for p in secret if p and os.path.exists(p)):
        for q in bind:
            real_q = os.path.realpath(q)
            if _under(s, real_q):
                cover.add(os.path.normpath(os.path.join(q, os.path.relpath(s, real_q))))
    cover = sorted(cover)
    return {"bind": bind, "links": links, "devices": devices, "cover": cover}


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class SandboxWorker:
    """One zygote process, owned by one trusted grading process; grades one submission at a time."""

    def __init__(self, device: str = "cpu", sandboxed: bool = True, limits: Limits = Limits(),
                 preload: tuple[str, ...] = ("smollm2", "minilm"), hide: tuple[str, ...] = (),
                 start_timeout: float = 900.0, wait: bool = True):
        """Start the zygote; with wait=False return at once (it loads in the background until first used)."""
        self.device, self.sandboxed, self.limits = device, sandboxed, limits
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "grader.sandbox", str(theirs.fileno())],
                                      pass_fds=[theirs.fileno()], env=_zygote_env(), cwd="/",
                                      stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        theirs.close()
        self._control = ours
        config = {"device": device, "sandboxed": sandboxed, "limits": asdict(limits), "preload": list(preload),
                  "parent": os.getpid(), "views": _mounted_views(device, tuple(hide)) if sandboxed else None}
        ctl_send(self._control, {"op": "config", **config})
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
            self._control.settimeout(timeout)
            if message is not None:
                ctl_send(self._control, message, fds)
            reply, _ = ctl_recv(self._control)
        except (OSError, socket.timeout, ValueError) as exc:
            raise SandboxBroken(f"the sandbox worker stopped answering ({type(exc).__name__}){self._log_tail()}") \
                from None
        if reply is None:
            raise SandboxBroken(f"the sandbox worker exited{self._log_tail()}")
        if "error" in reply:
            raise SandboxBroken(reply["error"])
        return reply

    def _log_tail(self) -> str:
        try:
            self._log.seek(0)
            text = self._log.read()[-1500:].decode(errors="replace").strip()
        except OSError:
            return ""
        return f": {text}" if text else ""

    def alive(self) -> bool:
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
            header, _ = recv_frame(sock, deadline=time.monotonic() + 60)
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
        try:
            self._control.close()
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()

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

    def stop(self) -> str:
        if not self.status:
            self.status = self.worker.kill(self.pid)
            self.sock.close()
            self.output.join(timeout=5)
        return self.status


class SandboxSubmission(Submission):
    """The learner's functions in an isolated child. Same interface as InProcessSubmission."""

    def __init__(self, worker: SandboxWorker, exercise: str, source: str, filename: str):
        self.worker, self.exercise = worker, exercise
        self._source, self._filename = source, filename
        self._child: _Child | None = None
        self._seq = 0
        self.budget_left = worker.limits.budget
        self.timeouts = 0                # calls that ran out of time
        self.deaths = 0                  # calls during which the child died
        self.output = b""                # what the learner's code printed first (bounded), for diagnostics
        self.broken: str | None = None   # set when our side failed during a call (not the learner's fault)
        self._start()

    def _start(self) -> None:
        self._child = self.worker.spawn(self._source, self._filename)
        try:
            self._exchange("importing your code", None)
        except BaseException:
            self._stop()                 # a child whose import failed serves nothing
            raise

    def call(self, fn: str, *args, **kwargs) -> Any:
        return self._call(fn, args, kwargs, harness=False)

    def harness(self, name: str, *args, **kwargs) -> Any:
        if name == "modified_inputs" and hasattr(os, "memfd_create"):
            return self._call(name, args, kwargs, harness=True, watch=True)
        return self._call(name, args, kwargs, harness=True)

    def _call(self, fn: str, args, kwargs, harness: bool, watch: bool = False) -> Any:
        try:
            if watch:
                return self._modified_inputs(args[0], args[1:], kwargs)
            return self._call_once(fn, args, kwargs, harness)
        except SandboxBroken as exc:
            self.broken = str(exc)
            raise

    def _modified_inputs(self, fn: str, args, kwargs) -> list[str]:
        """grader.harness.modified_inputs, observed from this side: a verdict computed in the child could be forged
        (e.g. by patching torch.equal there), so the tensor arguments live in shared memory that the learner's
        function gets as its inputs, and this process compares them afterwards."""
        import torch
        named = {f"argument {i + 1}": a for i, a in enumerate(args)} | dict(kwargs)
        watched = {name: t.detach().cpu().contiguous() for name, t in named.items()
                   if type(t) in (torch.Tensor, torch.nn.Parameter) and t.numel() > 0}
        fds = []
        try:
            for t in watched.values():
                fd = os.memfd_create("llmstudy-argument")
                os.write(fd, t.reshape(-1).view(torch.uint8).numpy().tobytes())
                fds.append(fd)
            self._call_once(fn, args, kwargs, harness=False, shared=list(watched), fds=fds)
            changed = []
            for (name, before), fd in zip(watched.items(), fds):
                raw = bytearray(os.pread(fd, before.numel() * before.element_size(), 0))
                after = torch.frombuffer(raw, dtype=torch.uint8).view(before.dtype).reshape(before.shape)
                if not torch.equal(after.isnan(), before.isnan()) or \
                        not torch.equal(after.nan_to_num(), before.nan_to_num()):
                    changed.append(name)
            return changed
        finally:
            for fd in fds:
                os.close(fd)

    def _call_once(self, fn: str, args, kwargs, harness: bool, shared: list[str] = (), fds: list[int] = ()) -> Any:
        blob = codec.encode((list(args), kwargs))
        if harness and fn in ("exception_raised", "modified_inputs") and args:
            where = f"{args[0]}()"                       # these harness checks call one learner function
        else:
            where = f"your code (checked by {fn})" if harness else f"{fn}()"
        if self.budget_left <= 0:
            raise SubmissionTimeout(f"not run: your code used up its total time of {self.worker.limits.budget:g} s")
        if self._child is None:
            self._start()
        self._seq += 1
        header = {"op": "call", "fn": fn, "harness": harness, "seq": self._seq, "shared": list(shared)}
        try:
            if fds:
                data = json.dumps(header).encode()
                frame = HEADER.pack(len(data), len(blob)) + data + blob
                sent = socket.send_fds(self._child.sock, [frame], list(fds))
                self._child.sock.sendall(frame[sent:])
            else:
                send_frame(self._child.sock, header, blob)
        except OSError:                  # it exited after its last answer (e.g. a timer calling os._exit)
            self.deaths += 1
            raise LearnerError(f"the process running your code had exited before {where} ({self._stop()})") \
                from None
        out = self._exchange(where, self._seq)
        try:
            return codec.decode(out)
        except Exception as exc:  # noqa: BLE001 - anything the child sends is untrusted
            self._stop()
            raise LearnerError(f"{where} returned a value the grader could not read ({type(exc).__name__})") \
                from None

    def _exchange(self, where: str, seq: int | None) -> bytes:
        """Wait for the child's answer to the last request; on timeout or death, stop it (the next call respawns)."""
        limit = min(self.worker.limits.call_timeout, max(self.budget_left, 0.0))
        start = time.monotonic()
        try:
            header, blob = recv_frame(self._child.sock, deadline=start + limit)
            if header.get("seq") != seq:
                raise ProtocolError("an answer arrived out of order")
        except TimeoutError:
            self.timeouts += 1
            self._stop()
            raise SubmissionTimeout(f"{where} did not finish within {limit:g} s (an endless loop?)") from None
        except (EOFError, OSError, ProtocolError, struct.error) as exc:
            self.deaths += 1
            status = self._stop()
            detail = f"{exc}" if isinstance(exc, ProtocolError) else status
            raise LearnerError(f"the process running your code died during {where} ({detail})") from None
        finally:
            self.budget_left -= time.monotonic() - start
        if header.get("ok") is not True:
            message = header.get("message")
            raise LearnerError(str(message)[:1000] if message else f"{where} failed")
        return blob

    def _stop(self) -> str:
        child, self._child = self._child, None
        if child is None:
            return ""
        status = child.stop()
        if len(self.output) < self.worker.limits.output_kb * 1024:
            self.output += bytes(child.output.kept)
        return status

    def close(self) -> None:
        self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- zygote side (runs as `python -m grader.sandbox FD`) ---------------------------------------------------------
def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = {"SIGKILL": "killed", "SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit",
                "SIGSEGV": "crashed"}.get(name, "")
        return f"{name}{', ' + hint if hint else ''}"
    return f"exit code {os.WEXITSTATUS(status)}"


def _zygote_main(control_fd: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    control = socket.socket(fileno=control_fd)
    config, _ = ctl_recv(control)
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)   # the trusted process died: stop, and so do the children
        if os.getppid() != config["parent"]:
            sys.exit(0)
    try:
        _preload(config)
    except Exception as exc:  # noqa: BLE001 - reported to the trusted side, which stops
        ctl_send(control, {"error": f"the sandbox worker could not start: {describe_exception('preloading', exc)}"})
        return
    stage = tempfile.mkdtemp(prefix="llmstudy-sandbox-")
    config["uid"] = UID_BASE + os.getpid()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY) if config["sandboxed"] else -1
    children: set[int] = set()
    ctl_send(control, {"ok": True})
    try:
        while True:
            try:
                message, fds = ctl_recv(control, max_fds=2)
            except (OSError, ValueError):
                break
            if message is None:
                break
            if message["op"] == "ping":
                reply = {"pid": os.getpid(), "uid": config["uid"], "sandboxed": config["sandboxed"]}
            elif message["op"] == "spawn":
                try:
                    pid = _spawn(config, stage, own_pid_ns, fds[0], fds[1], control)
                    children.add(pid)
                    reply = {"pid": pid}
                except OSError as exc:
                    reply = {"error": f"could not start a sandboxed process: {exc}"}
                finally:
                    for fd in fds:
                        os.close(fd)
            elif message["op"] == "kill":
                pid = message["pid"]
                if pid not in children:
                    reply = {"error": f"no child {pid}"}
                else:
                    reply = {"status": _kill(pid, config["sandboxed"])}
                    children.discard(pid)
            else:
                reply = {"error": f"unknown op {message['op']!r}"}
            ctl_send(control, reply)
    finally:
        for pid in children:
            _kill(pid, config["sandboxed"])
        os.rmdir(stage)


def _preload(config: dict) -> None:
    """Import what children need and load the models before forking, so each child starts in milliseconds and
    shares the weights copy-on-write. CUDA is not touched here: a forked child can't use a parent's CUDA context."""
    import torch
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import transformers  # noqa: F401

    from grader import harness, submission  # noqa: F401
    from llmstudy import models
    for name in config["preload"]:
        models.load(name, "cpu")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "solutions" or m.startswith("grader.tests"))
    if leaked:
        raise RuntimeError(f"the learner side imported {', '.join(leaked)}; it must never hold the references")


def _kill(pid: int, sandboxed: bool) -> str:
    try:
        if sandboxed:
            os.kill(pid, signal.SIGKILL)     # PID 1 of its namespace: the kernel kills the rest of it
        else:
            os.killpg(pid, signal.SIGKILL)   # its session's process group (a daemon that left it can survive)
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(pid, 0)
    return _describe_status(status)


def _spawn(config: dict, stage: str, own_pid_ns: int, sock_fd: int, out_fd: int, control: socket.socket) -> int:
    sandboxed = config["sandboxed"]
    if sandboxed:
        _unshare(CLONE_NEWPID)               # only the next child enters the new PID namespace, as its PID 1
    try:
        pid = os.fork()
    except OSError:
        if sandboxed:
            _setns(own_pid_ns, CLONE_NEWPID)
        raise
    if pid != 0:
        if sandboxed:
            _setns(own_pid_ns, CLONE_NEWPID)     # later children start in our own namespace again
        return pid
    code = 0
    try:
        control.detach()
        _child_main(config, stage, sock_fd, out_fd)
    except BaseException:  # noqa: BLE001 - never return into the zygote's loop
        code = 70
    finally:
        os._exit(code)


def _child_main(config: dict, stage: str, sock_fd: int, out_fd: int) -> None:
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.dup2(sock_fd, 3)
    os.closerange(4, 65536)
    sock = socket.socket(fileno=3)
    limits = Limits(**config["limits"])
    try:
        os.setsid()
        if config["sandboxed"]:
            _enter_sandbox(config["views"], stage, limits)
            os.chdir("/tmp")
        else:
            os.chdir(tempfile.mkdtemp(prefix="llmstudy-child-"))
        drop = os.geteuid() == 0 and (config["sandboxed"] or python_readable_by_others())
        _restrict(limits, config["uid"] if drop else None, gpu=config["device"].startswith("cuda"))
        if sys.platform.startswith("linux"):
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)   # the zygote died: so does this child's whole namespace
    except OSError as exc:
        send_frame(sock, {"ready": False, "error": f"sandbox setup failed: {exc}"})
        return
    send_frame(sock, {"ready": True})     # before any learner code: later frames can't speak for our side
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=os.getcwd(), TMPDIR=os.getcwd(), LANG="C.UTF-8",
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      OMP_NUM_THREADS="1")
    _share_preloaded_models(config["preload"])
    _serve(sock, config["device"])


def _share_preloaded_models(preloaded: list[str]) -> None:
    """Make every form of models.load(name[, device]) in the learner's process reuse the zygote's copies: "auto"
    and keyword calls resolve to the same cached CPU model (a top-level `model, tok = load("smollm2")` in a
    notebook takes no time), and a GPU gets a copy of it moved there instead of a second load from disk."""
    import copy
    import functools

    from llmstudy import models
    load_once = models.load

    @functools.cache
    def load(name: str, device: str = "auto"):
        where = models.resolve_device(device)
        if where == "cpu" or name not in preloaded:
            return load_once(name, where)
        model, tokenizer = load_once(name, "cpu")
        return copy.deepcopy(model).to(where), tokenizer

    models.load = load


def _enter_sandbox(views: dict, stage: str, limits: Limits) -> None:
    _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)     # nothing below propagates back to the host
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")

    def inside(path: str) -> str:
        return stage + path

    # /tmp first: a tree bound below it (a venv or model files under /tmp) must sit on top of the tmpfs, not under it.
    os.makedirs(inside("/tmp"))
    _mount("tmpfs", inside("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={limits.tmp_mb}m,mode=1777")
    for path in views["bind"]:
        target = inside(path)
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:                            # a single file (e.g. a model's GGUF outside the venv) needs a file to cover
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _mount(path, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in views["cover"]:          # secrets inside a bound tree (e.g. solutions/ in site-packages)
        if os.path.isdir(path):
            _mount("tmpfs", inside(path), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")
        else:
            _mount("/dev/null", inside(path), None, MS_BIND)
    for link, target in views["links"].items():
        os.symlink(target, inside(link))
    os.makedirs(inside("/dev"))
    _mount("tmpfs", inside("/dev"), "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for dev in views["devices"]:
        if os.path.isdir(dev):
            os.makedirs(inside(dev), exist_ok=True)
        else:
            open(inside(dev), "w").close()
        _mount(dev, inside(dev), None, MS_BIND | MS_REC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, inside(f"/dev/{name}"))
    os.makedirs(inside("/dev/shm"))
    _mount("tmpfs", inside("/dev/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777")
    os.makedirs(inside("/proc"))
    _mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _pivot_root(stage)
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    socket.sethostname("sandbox")


def _restrict(limits: Limits, uid: int | None, gpu: bool = False) -> None:
    import resource

    def vm_size() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

    caps = [(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5),
            (resource.RLIMIT_FSIZE, limits.file_mb << 20, limits.file_mb << 20),
            (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
            (resource.RLIMIT_CORE, 0, 0)]
    if hasattr(resource, "RLIMIT_NPROC"):
        caps.append((resource.RLIMIT_NPROC, limits.processes, limits.processes))
    if sys.platform.startswith("linux") and not gpu:   # macOS ignores RLIMIT_AS; CUDA reserves huge address ranges
        memory = vm_size() + (limits.memory_mb << 20)
        caps.append((resource.RLIMIT_AS, memory, memory))
    for which, soft, hard in caps:
        resource.setrlimit(which, (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an oversized write fails with an error instead of a kill
    if os.path.exists("/proc/self/oom_score_adj"):
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")                       # if memory runs out anyway, the kernel kills learner code first
    os.nice(10)
    os.umask(0o077)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _serve(sock: socket.socket, device: str) -> None:
    """The child's loop: run the learner's code once, then answer calls until killed."""
    from grader.submission import run_call

    namespace: dict = {"__name__": "submission"}
    while True:
        try:
            request, blob, fds = _recv_frame_with_fds(sock)
        except (EOFError, OSError, ProtocolError):
            return
        seq = request.get("seq")
        try:
            if request["op"] == "load":
                try:
                    exec(compile(request["source"], request["filename"], "exec"), namespace)  # noqa: S102
                except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
                    raise LearnerError(describe_exception("your code at import", exc)) from None
                out = b""
            else:
                fn, harness = request["fn"], request["harness"]
                try:
                    if request.get("shared"):
                        out = _call_on_shared(namespace, fn, blob, request["shared"], fds)
                    else:
                        out = run_call(namespace, fn, blob, device, harness)
                except LearnerError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, GeneratorExit
                    where = f"your code (checked by {fn})" if harness else f"{fn}()"
                    raise LearnerError(describe_exception(where, exc)) from None
            reply = {"ok": True, "seq": seq}
        except LearnerError as exc:
            reply, out = {"ok": False, "seq": seq, "message": str(exc)}, b""
        except BaseException as exc:  # noqa: BLE001 - e.g. a MemoryError while encoding
            reply, out = {"ok": False, "seq": seq, "message": describe_exception("your code", exc)}, b""
        try:
            send_frame(sock, reply, out)
        except OSError:
            return


def _call_on_shared(namespace: dict, fn: str, blob: bytes, shared: list[str], fds: list[int]) -> bytes:
    """Call the learner's fn with the named tensor arguments backed by the grader's shared memory; return nothing
    (only what the call does to its inputs matters, and the grader reads that from its side)."""
    import mmap

    import torch
    args, kwargs = codec.decode(blob, resolve_model=lambda name: __import__("llmstudy.models").models.load(name, "cpu")[0])
    args = list(args)
    for name, fd in zip(shared, fds):
        original = args[int(name.split()[1]) - 1] if name.startswith("argument ") else kwargs[name]
        memory = mmap.mmap(fd, original.numel() * original.element_size())
        os.close(fd)
        view = torch.frombuffer(memory, dtype=torch.uint8).view(original.dtype).reshape(original.shape)
        if name.startswith("argument "):
            args[int(name.split()[1]) - 1] = view
        else:
            kwargs[name] = view
    target = namespace.get(fn)
    if not callable(target):
        raise LearnerError(f"no function named {fn}() was found; define it with exactly this name")
    try:
        target(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any learner failure becomes a message
        raise LearnerError(describe_exception(f"{fn}()", exc)) from None
    return codec.encode(None)


if __name__ == "__main__":
    _zygote_main(int(sys.argv[1]))
