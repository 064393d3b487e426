"""Trusted side: start zygote processes (grader/sandbox/zygote.py), when a SandboxWorker needs one or ahead of time.

    zygote = launch(("smollm2", "minilm"))    # a fresh zygote, importing torch, transformers and these tokenizers
    start_template()                           # in a LocalCluster's forkserver, before its own imports
    zygote = claim()                           # in a worker forked from it: a zygote forked from the template

A zygote spends ~3 core-s importing torch and transformers and loading two tokenizers before its first child. Each
LocalCluster worker used to start its own once it existed, i.e. after the forkserver that the workers are forked
from had spent ~3.3 s importing on one core while the other idled (grader.cluster, grader.worker_preload); starting
the workers' zygotes beside the forkserver instead put three imports on two cores. Now the forkserver starts one
zygote *template* first (grader.cluster sets TEMPLATE_ENV): it imports once, on the idle core, and forks a zygote
for each control socket a worker sends it, in milliseconds, everything already imported. A worker inherits the
template's request socket from the forkserver; requests are single SOCK_SEQPACKET messages, so workers never mix.

Nothing is decided early: a forked zygote learns its settings (sandboxed or not, the views to mount, its uid)
only from the config its worker sends, exactly as a launched one does. The template holds what a zygote holds
(torch, transformers, the tokenizers, the minimal environment) and runs no learner code. Parents: the template's
is the forkserver (PR_SET_PDEATHSIG: it ends with it, and the forkserver ends with the grading process); a forked
zygote's is the template. A worker can't wait for a zygote that is not its child, so it waits for its end of the
control channel to close (SandboxWorker.close).

No torch here: the forkserver imports this first, so that its template starts at once.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

TEMPLATE_ENV = "LLMSTUDY_ZYGOTE_TEMPLATE"      # "1": the forkserver starts a zygote template for its workers
TOKENIZERS = ("smollm2", "minilm")             # what a learner's process may hold besides model proxies


@dataclass
class Zygote:
    """A started zygote process, before its config."""
    pid: int | None                            # None until it says (forked by a template on request)
    parent: int                                # the process it was started by (its PR_SET_PDEATHSIG is tied to it)
    control: socket.socket                     # our end of its control channel
    log: object                                # its stdout and stderr, a temporary file
    proc: subprocess.Popen | None              # None in a process that did not start it (it can't wait for it)


def zygote_env() -> dict[str, str]:
    """Only what Python and the model loader need; instructor secrets (tokens, keys) never reach learner code.
    THP_MEM_ALLOC_ENABLE: torch puts large CPU tensors on 2 MB pages, so a learner's [128, V] sampling tensors are
    not faulted in 4 KB at a time (expanding 128 rows of logits: 58 -> 24 ms on the benchmark's VM)."""
    from llmstudy import models
    keep = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "TMPDIR",
            "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTORCH_NVML_BASED_CUDA_CHECK="1", THP_MEM_ALLOC_ENABLE="1",
               **{models.CACHE_ENV: str(models.cache_dir())})
    return env


def launch(tokenizers: tuple[str, ...]) -> Zygote:
    """A new zygote, which imports and loads `tokenizers` at once, then waits for its config."""
    return _start([], socket.SOCK_STREAM, tokenizers)


def _start(mode: list[str], kind: int, tokenizers: tuple[str, ...]) -> Zygote:
    """`python -m llmstudy.grader.sandbox.zygote [MODE] FD TOKENIZERS`, FD its end of a new socket pair of `kind`."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    log = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "llmstudy.grader.sandbox.zygote", *mode, str(theirs.fileno()),
                                 ",".join(tokenizers)], pass_fds=[theirs.fileno()], env=zygote_env(), cwd="/",
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    except BaseException:
        ours.close()
        log.close()
        raise
    finally:
        theirs.close()
    return Zygote(proc.pid, os.getpid(), ours, log, proc)


def loadable(tokenizers: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `tokenizers` that load without loading a model first (SmolLM2's needs its fp32 cache built)."""
    from llmstudy import models
    return tuple(t for t in tokenizers if t != "smollm2" or models.smollm2_cache_built())


_template: Zygote | None = None                 # started ahead, in this process or the one it was forked from
_requests: socket.socket | None = None          # SOCK_SEQPACKET to it: one control socket per message


def start_template() -> None:
    """Start a zygote template here, for workers that will be forked from this process (see the module docstring)."""
    global _template, _requests
    if _template is not None:
        return
    try:
        _template = _start(["--template"], socket.SOCK_SEQPACKET, loadable(TOKENIZERS))
    except OSError:                              # out of processes or memory: each worker starts its own zygote
        return
    _requests = _template.control


def claim() -> Zygote | None:
    """A new zygote forked from the template this process inherited (importing nothing: the template did), or None
    if there is none or it has gone. Its control socket is this process's alone, as for a zygote launched here."""
    if _requests is None:
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket.send_fds(_requests, [b"zygote"], [theirs.fileno()])     # one message: atomic among workers
    except OSError:
        ours.close()
        return None
    finally:
        theirs.close()
    return Zygote(None, _template.pid, ours, _template.log, None)


def at_eof(control: socket.socket) -> bool:
    """Whether the zygote at the other end of `control` has closed it (exited)."""
    import select
    try:
        ready, _, _ = select.select([control], [], [], 0)
        return bool(ready) and control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
