"""The walls around a child: Linux namespaces, mounts, rlimits and the uid drop, and what the child's root holds.

Used by the zygote and the child (grader/sandbox/zygote.py, child.py) to build the walls, and by the trusted client
to decide what the child may see (`mounted_views`). Python 3.11 has no os.unshare/mount, so libc is called through
ctypes; nothing here runs learner code.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
UID_BASE = 1 << 30                     # child uid = UID_BASE + zygote pid: unused by real accounts, unique per zygote
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ot")


@dataclass(frozen=True)
class Limits:
    # CPU seconds per call into the learner's code (and for the import), counted on its process, so that a busy
    # machine or a cold disk can't time out an honest call; a call also ends after wall_factor x this in wall time
    # (sleeping, blocked, or waiting on the model: the grader's forward passes are not the learner's CPU time).
    call_timeout: float = 20.0
    wall_factor: float = 3.0           # so a child that gets a third of a core still has its call_timeout of CPU
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


def unshare(flags: int) -> None:
    _ok(_c().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _ok(_c().setns(fd, nstype), "setns")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _ok(_c().mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {dst}")


def prctl(option: int, arg: int) -> None:
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


class SandboxUnavailable(RuntimeError):
    """Isolation can't be set up here; the message says why and how to proceed."""


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
            unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID)
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


def mounted_views(device: str, hide: tuple[str, ...]) -> dict:
    """What the child's root contains: read-only binds, top-level symlinks, and paths to cover inside the binds.

    Tokenizers are visible (exercise 05 gives the learner one); model weights are not: every weight file of the
    bundled models is covered, so the learner's process can't load a model of its own (it gets a proxy instead)."""
    import llmstudy
    from llmstudy import models

    bind = ["/usr", "/etc", sys.prefix, sys.base_prefix, sys.exec_prefix,
            str(Path(llmstudy.__file__).resolve().parent), *map(str, models.tokenizer_dirs())]
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
    secret = {str(ROOT / "solutions"), str(ROOT / "grader"), str(ROOT / "examples"), str(ROOT / ".git"), *hide}
    import importlib.util
    # The answers, the graders, and the example class (ada's files are full marks); by the names a wheel installs
    # them under and by the bare names a checkout's folders can be imported by.
    for package in ("llmstudy.solutions", "llmstudy.grader", "llmstudy.examples", "solutions", "grader"):
        try:
            spec = importlib.util.find_spec(package)
        except ImportError:
            spec = None
        if spec is not None and spec.submodule_search_locations:
            secret.update(spec.submodule_search_locations)
    for info in models.available():
        if info.files is not None:
            secret.update(str(p) for p in _weight_files(info.files))
    secret.update(str(p) for d in models.tokenizer_dirs() for p in _weight_files(d))
    # A secret that lies inside a bound tree (e.g. solutions/ installed into site-packages) gets covered there,
    # compared by real paths so that a link in either path can't uncover it.
    cover = set()
    for s in (os.path.realpath(p) for p in secret if p and os.path.exists(p)):
        for q in bind:
            real_q = os.path.realpath(q)
            if _under(s, real_q):
                cover.add(os.path.normpath(os.path.join(q, os.path.relpath(s, real_q))))
    # outermost only: inside a covered folder there is nothing left to cover (a path below it no longer exists)
    cover = sorted(c for c in cover if not any(c != d and _under(c, d) for d in cover))
    return {"bind": bind, "links": links, "devices": devices, "cover": cover}


def _weight_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix in WEIGHT_SUFFIXES else []
    return [p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()] if path.is_dir() else []


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def enter_sandbox(views: dict, stage: str, limits: Limits) -> None:
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
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


def restrict(limits: Limits, uid: int | None, gpu: bool = False) -> None:
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
        prctl(PR_SET_NO_NEW_PRIVS, 1)


