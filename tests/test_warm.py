"""The warm cluster of `llmstudy serve` (grader.warm): batches on it, found by `llmstudy grade` or named with
--scheduler, are byte for byte a fresh LocalCluster's (conftest's `local`); only its own credentials connect; stale
graders are passed over or refused in one line; a second serve says where the first runs; Ctrl-C stops it cleanly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from class_runs import CLASS, ROOT, grade, output_files, sandboxed, wait_for


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """`llmstudy serve --workers 2 --port 0`, in a session of its own (a signal to its group is what a terminal's
    Ctrl-C sends), with a model cache folder of its own: links to the real one's entries, so that its credentials
    file is this test's and never a running user's. Yields (address, process, env for commands that use it)."""
    from llmstudy import models
    cache = tmp_path_factory.mktemp("warm-cache")
    if models.cache_dir().is_dir():
        for entry in models.cache_dir().iterdir():
            if entry.name != "warm-cluster.json":
                (cache / entry.name).symlink_to(entry)
    env = dict(os.environ, LLMSTUDY_CACHE=str(cache))
    folder = tmp_path_factory.mktemp("warm")
    out, err = folder / "serve.out", folder / "serve.err"
    proc = subprocess.Popen([sys.executable, "-m", "llmstudy.cli", "serve", "--workers", "2", "--port", "0"],
                            cwd=ROOT, env=env, stdout=out.open("w"), stderr=err.open("w"), start_new_session=True)
    try:
        line = wait_for(lambda: proc.poll() is not None or next(
            (w for w in out.read_text().split() if w.startswith("tls://")), None), "llmstudy serve's address", 300)
        assert proc.poll() is None, err.read_text()[-3000:]
        yield line, proc, env, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@sandboxed
def test_a_warm_cluster_grades_batch_after_batch_like_a_fresh_one(local, warm, timeless_class, tmp_path):
    """The first batch names the cluster; the second finds it (no --scheduler, no --workers), and finds the workers'
    imports, models and memo in place."""
    address, _, env, _ = warm
    named = grade(tmp_path / "named", "--scheduler", address, klass=timeless_class, env=env)
    found = grade(tmp_path / "found", klass=timeless_class, env=env)
    assert "warm cluster" not in named.stderr
    assert f"grading on the warm cluster of `llmstudy serve` at {address}" in found.stderr, found.stderr[-2000:]
    for batch in ("named", "found"):
        assert output_files(tmp_path / batch) == output_files(local), batch


def _imported_code_becomes(digest: str) -> str:
    """Source that makes a worker say it imported `digest` (grader.worker_preload.IMPORTED_CODE), for client.run(exec)."""
    return f"import sys; sys.modules['llmstudy.grader.worker_preload'].IMPORTED_CODE = {digest!r}"


@sandboxed
def test_a_warm_cluster_with_older_graders_is_passed_over_in_one_line(warm, monkeypatch, tmp_path):
    """Found by itself, a stale warm cluster is named and a fresh cluster grades instead (--scheduler refuses it:
    the test below). Its workers are made to say they imported other graders, as after an edit since it started."""
    from distributed import Client

    from llmstudy.grader.warm import security_for
    from llmstudy.grader.worker import imported_code
    address, _, env, _ = warm
    klass = tmp_path / "class"
    (klass / "ada").mkdir(parents=True)
    shutil.copy(CLASS / "ada" / "01_positional_encoding.py", klass / "ada")
    monkeypatch.setenv("LLMSTUDY_CACHE", env["LLMSTUDY_CACHE"])
    with Client(address, timeout="30s", security=security_for(address)) as client:
        real = client.run(imported_code)                  # {worker: the digest it really imported}
        client.run(exec, _imported_code_becomes("0" * 16))
        try:
            run = grade(tmp_path / "out", klass=klass, env=env)
        finally:
            for worker, digest in real.items():
                client.run(exec, _imported_code_becomes(digest), workers=[worker])
    note = [line for line in run.stderr.splitlines() if "warm cluster" in line]
    assert note == [f"not grading on the warm cluster at {address}: 2 of its 2 workers imported other grading code "
                    "(restart it); a fresh cluster grades instead"], run.stderr[-3000:]
    [ada] = json.loads((tmp_path / "out" / "results.json").read_text())["submissions"]
    record = next(e for e in ada["exercises"] if e["exercise"] == "positional_encoding")
    assert record["status"] == "graded" and record["score"] == record["max_score"] > 0, record


def test_only_the_warm_clusters_own_credentials_connect(warm):
    import stat

    from distributed import Client
    from distributed.security import Security
    address, _, env, _ = warm
    credentials = Path(env["LLMSTUDY_CACHE"]) / "warm-cluster.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    for other in (dict(security=Security.temporary()), dict(address=address.replace("tls://", "tcp://"))):
        with pytest.raises(OSError):                 # another certificate; no TLS at all
            Client(other.pop("address", address), timeout="10s", **other)


def test_grading_code_changed_since_the_warm_cluster_started_is_one_line(warm, monkeypatch, tmp_path):
    from llmstudy.cli import main
    from llmstudy.grader import cluster
    address, _, env, _ = warm
    monkeypatch.setenv("LLMSTUDY_CACHE", env["LLMSTUDY_CACHE"])
    monkeypatch.setattr(cluster, "code_digest", lambda: "0" * 16)      # as if a grader had been edited since
    run = CliRunner().invoke(main, ["grade", str(CLASS), "--out", str(tmp_path / "r.json"), "--scheduler", address])
    assert run.exit_code == 1 and "imported other grading code" in run.output, run.output
    assert "llmstudy serve" in run.output and len(run.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_a_second_serve_says_where_the_first_runs(warm):
    address, _, env, _ = warm
    run = subprocess.run([sys.executable, "-m", "llmstudy.cli", "serve", "--port", "0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and f"already running at {address}" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_ctrl_c_stops_the_warm_cluster_and_its_workers_cleanly(warm, monkeypatch):
    """Last of the warm tests: it stops the fixture's cluster."""
    from distributed import Client

    from llmstudy.grader.warm import security_for
    address, proc, env, err = warm
    monkeypatch.setenv("LLMSTUDY_CACHE", env["LLMSTUDY_CACHE"])
    with Client(address, timeout="30s", security=security_for(address)) as client:
        workers = list(client.run(os.getpid).values())
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGINT)                    # what Ctrl-C in its terminal sends: the whole group
    assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]
    assert "Traceback" not in err.read_text(), err.read_text()[-3000:]
    assert not (Path(env["LLMSTUDY_CACHE"]) / "warm-cluster.json").exists()
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in workers), "the workers to exit", 120)
