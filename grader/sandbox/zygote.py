"""The zygote: a pre-warmed process that forks one child per submission (`python -m llmstudy.grader.sandbox.zygote FD`).

Started by the trusted client (grader/sandbox/client.py) with a minimal environment, it imports torch, transformers
and the tokenizers once, so that a child starts in milliseconds and shares them copy-on-write. It holds no model
weights, no grader code beyond the child's serve loop, and never `solutions` or `grader.tests`; it never runs learner
code itself. Control frames (grader/sandbox/protocol.py): {"op": "config"} once, then "ping", "spawn" (with the
child's socket and output pipe as descriptors) and "kill". It imports before its config comes (`... FD TOKENIZERS`
names the tokenizers to load then). `--template` starts a process that imports once and forks zygotes on request
(template() below): started ahead of a LocalCluster's workers, it has them ready when the workers are
(grader/sandbox/launch.py).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile

from llmstudy.grader.sandbox import isolation
from llmstudy.grader.sandbox.protocol import recv_frame, send_frame

# Grader code the learner's side must never hold (the bare names too: a checkout's folders are importable by them).
LEAKS = tuple(prefix + name for prefix in ("llmstudy.", "") for name in (
    "solutions", "grader.tests", "grader.checks", "grader.model_server", "grader.runner", "grader.sandbox.client"))


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = {"SIGKILL": "killed", "SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit",
                "SIGSEGV": "crashed"}.get(name, "")
        return f"{name}{', ' + hint if hint else ''}"
    return f"exit code {os.WEXITSTATUS(status)}"


def main(control_fd: int, tokenizers: tuple[str, ...] = ()) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    control = socket.socket(fileno=control_fd)
    if sys.platform.startswith("linux"):
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGTERM)   # the trusted process died: stop, and so do children
    parent = os.getppid()            # after the prctl: a parent that died before it shows up as another process here
    problem = None
    try:
        _import(tokenizers)          # before the config: a zygote started ahead of its worker imports meanwhile
    except Exception as exc:  # noqa: BLE001 - reported once the config has come
        problem = exc
    config, _, _ = recv_frame(control)
    if sys.platform.startswith("linux") and parent != config["parent"]:
        sys.exit(0)
    try:
        if problem is not None:
            raise problem
        _preload(config)
    except Exception as exc:  # noqa: BLE001 - reported to the trusted side, which stops
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        send_frame(control, {"error": f"the sandbox worker could not start: preloading raised "
                                      f"{type(exc).__name__}: {text}"})
        return
    stage = tempfile.mkdtemp(prefix="llmstudy-sandbox-")
    config["uid"] = isolation.UID_BASE + os.getpid()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY) if config["sandboxed"] else -1
    children: set[int] = set()
    send_frame(control, {"ok": True})
    try:
        while True:
            try:
                message, _, fds = recv_frame(control, max_fds=2)
            except (OSError, ValueError, EOFError):
                break
            op = message.get("op")
            if op == "ping":
                reply = {"pid": os.getpid(), "uid": config["uid"], "sandboxed": config["sandboxed"]}
            elif op == "spawn" and len(fds) == 2:
                try:
                    pid = _spawn(config, stage, own_pid_ns, fds[0], fds[1], control)
                    children.add(pid)
                    reply = {"pid": pid}
                except OSError as exc:
                    reply = {"error": f"could not start a sandboxed process: {exc}"}
            elif op == "kill" and message.get("pid") in children:
                reply = {"status": _kill(message["pid"], config["sandboxed"])}
                children.discard(message["pid"])
            else:
                reply = {"error": f"bad control message {op!r}"}
            for fd in fds:
                os.close(fd)
            send_frame(control, reply)
    finally:
        for pid in children:
            _kill(pid, config["sandboxed"])
        os.rmdir(stage)


def template(requests_fd: int, tokenizers: tuple[str, ...]) -> None:
    """`zygote --template FD TOKENIZERS`: import once, then fork a zygote for each control socket that arrives on
    the SOCK_SEQPACKET socket FD (one descriptor per message; grader/sandbox/launch.py sends them). A forked zygote
    runs main() as if just started, with everything imported; its parent is this process. Ends when every sender
    has closed FD, or with its own parent (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if sys.platform.startswith("linux"):
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGTERM)
    requests = socket.socket(fileno=requests_fd)
    _import(tokenizers)              # an error ends the template: each worker then starts its own zygote
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)        # forked zygotes are reaped by the kernel
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(requests, 64, 1)
        except InterruptedError:
            continue
        if not message and not fds:
            return
        for fd in fds:
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)    # a zygote waits for its own children
                requests.close()
                code = 0
                try:
                    main(fd)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 0
                except BaseException:  # noqa: BLE001 - printed to the log the trusted side shows
                    import traceback
                    traceback.print_exc()
                    code = 1
                sys.stderr.flush()
                os._exit(code)
            os.close(fd)


_imported = False


def _import(tokenizers: tuple[str, ...]) -> None:
    """Import what children need before forking; load tokenizers (no weights). CUDA is not touched here: a forked
    child can't use a parent's CUDA context. A zygote forked from a template finds this done."""
    global _imported
    import torch
    if not _imported:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        _imported = True
    import transformers  # noqa: F401

    from llmstudy.grader.sandbox import child  # noqa: F401
    from llmstudy import models
    for name in tokenizers:
        models.load_tokenizer(name)


def _preload(config: dict) -> None:
    """After _import: the config's tokenizers too (each loads once: models.load_tokenizer is cached), the leak check,
    and gc.freeze() over all of it."""
    from llmstudy import models
    for name in config["tokenizers"]:
        models.load_tokenizer(name)
    leaked = sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in LEAKS))
    if leaked:
        raise RuntimeError(f"the learner side imported {', '.join(leaked)}; it must never hold grader code")
    import gc
    gc.freeze()     # torch and the tokenizers: a child's collections skip them, and leave the pages it shares alone


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
        isolation.unshare(isolation.CLONE_NEWPID)   # only the next child enters the new PID namespace, as its PID 1
    try:
        pid = os.fork()
    except OSError:
        if sandboxed:
            isolation.setns(own_pid_ns, isolation.CLONE_NEWPID)
        raise
    if pid != 0:
        if sandboxed:
            isolation.setns(own_pid_ns, isolation.CLONE_NEWPID)     # later children start in our own namespace again
        return pid
    code = 0
    try:
        control.detach()
        from llmstudy.grader.sandbox import child
        child.main(config, stage, sock_fd, out_fd)
    except BaseException:  # noqa: BLE001 - never return into the zygote's loop
        code = 70
    finally:
        os._exit(code)


if __name__ == "__main__":
    code = 0
    try:
        args = sys.argv[1:]
        run = template if args[:1] == ["--template"] else main
        args = args[1:] if run is template else args
        run(int(args[0]), tuple(t for t in args[1].split(",") if t) if len(args) > 1 else ())
    except SystemExit as exc:            # SIGTERM (the trusted side's owner thread ended): children already reaped
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - printed to the log the trusted side shows
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # children reaped and the stage removed: skip tearing torch down (~0.9 s at every worker's end)
