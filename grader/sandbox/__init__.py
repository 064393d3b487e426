"""Runs untrusted submissions: a pre-warmed zygote forks one fresh, isolated child per submission.

One file per process, so the file name says how far its code is trusted:
  client.py     trusted grader: SandboxWorker, SandboxSubmission; computes every verdict and serves model calls
                from the grader's own copy of the model (grader/model_server.py). Never runs learner code.
  launch.py     trusted: starts zygotes, or (in a LocalCluster's forkserver) one zygote template that forks its
                workers' zygotes on request. No torch.
  zygote.py     `python -m llmstudy.grader.sandbox.zygote`: imports torch, transformers and the tokenizers, forks children.
                Holds no model weights and no grader code beyond the child's serve loop; never runs learner code.
  child.py      one per submission (and a fresh one after each timeout or crash): runs the learner's code and
                answers calls by value: a value, or the qualified name of the exception raised, nothing else.
  protocol.py   the one framing all channels use; isolation.py the walls (namespaces, mounts, rlimits, uid).

What holds in the child (Linux, grader running as root; `isolation_problem()` says when it doesn't):
  - PID namespace: the child is PID 1 of its own namespace; killing it kills everything it started, daemons too.
  - Network namespace: no interfaces but a downed loopback, so no connection goes anywhere.
  - Mount namespace + pivot_root into a fresh tmpfs root holding read-only binds of only what Python needs
    (/usr, /etc, the Python install, the venv, llmstudy/, the tokenizers); solutions/, grader/, the project's .git,
    submissions, outputs and every model weight file are not there (covered by empty mounts if they live inside a
    bound tree). /tmp is a small private tmpfs and the working directory; /proc shows only the child's processes.
  - IPC and UTS namespaces; a new session; an unprivileged uid/gid per zygote (no groups); PR_SET_NO_NEW_PRIVS;
    rlimits on address space, CPU seconds, processes, file size, open files and core dumps; nice 10.
  - A minimal environment (no instructor variables); stdout/stderr go to a pipe the grader drains and truncates.
  - Models are proxies: a forward pass is a request to the grader, whose logits come back in shared memory.
Without isolation (not root, not Linux, or namespaces unavailable) `sandboxed=False` keeps only the separate
process, its own session (killed as a process group), a temp working directory, the uid drop when root, and the
rlimits that the OS enforces; callers must ask for that explicitly (`--allow-unsandboxed`).

Names are exported lazily: the zygote and the child import llmstudy.grader.sandbox.isolation without pulling in the client.
"""
from __future__ import annotations

_EXPORTS = {"SandboxWorker": "client", "SandboxSubmission": "client", "SandboxBroken": "client",
            "SandboxUnavailable": "isolation", "Limits": "isolation", "UID_BASE": "isolation",
            "isolation_problem": "isolation", "python_readable_by_others": "isolation", "ProtocolError": "protocol"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"llmstudy.grader.sandbox.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'llmstudy.grader.sandbox' has no attribute {name!r}")
