"""Grade a whole class: SUBMISSIONS/<student>/<exercise file> -> grader.results.ClassResult.

    results = grade_class(Path("submissions"), workers=8)                          # a LocalCluster here
    results = grade_class(Path("submissions"), scheduler="tcp://10.0.0.5:8786")    # an existing Dask cluster
    results = grade_entries([("ana", "attention", Path("ana/02_attention.ipynb")), ("bo", "attention", None)],
                            journal=Path("results.journal.jsonl"), resume=True)

Each submitted file is one Dask task (grader.cluster): its bytes go to a worker, the hidden tests run there against
the learner's code in a fresh sandboxed child, and an ExerciseResult comes back. Every entry gets exactly one record
whatever its code does (statuses in grader.results). The cluster starts while the class is read.

With a journal, each record is appended as one flushed JSON line the moment it arrives; with resume=True the
records already there for unchanged files are kept and only the rest is graded. The class is assembled in entry
order, so it is the same, byte for byte once serialised, however and in whatever order its records arrived.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
from pathlib import Path

from llmstudy.grader.cluster import ALLOWED_FAILURES, ClusterUnavailable, Settings, Task
from llmstudy.grader.results import ClassResult, ExerciseResult, StudentResult
from llmstudy.catalog import EXERCISES, by_id

MAX_FILE_BYTES = 20 << 20     # a notebook with outputs is rarely over a few MB
Entry = tuple  # (student, exercise id, submitted file or None)


class JournalMismatch(ValueError):
    """--resume with a journal written for other grading options; the message says what to do."""


# --- reading the class --------------------------------------------------------------------------------------------
def find_submissions(submissions_dir: Path, exercises=None) -> list[Entry]:
    """(student, exercise id, file or None) for every student folder and exercise; a notebook wins over a .py."""
    submissions_dir = Path(submissions_dir)
    if not submissions_dir.is_dir():
        raise FileNotFoundError(f"{submissions_dir} is not a folder; expected SUBMISSIONS/<student>/<file>")
    exercises = exercises or graded_exercises()
    entries = []
    for student in sorted(p for p in submissions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for ex in exercises:
            found = [student / f"{ex.stem}{suffix}" for suffix in (".ipynb", ".py")]
            found = [p for p in found if p.is_file()]
            entries.append((student.name, ex.id, found[0] if found else None))
    return entries


def graded_exercises():
    """Exercises whose hidden graders exist."""
    return tuple(ex for ex in EXERCISES if ex.grader_path.exists())


def read_submission(path: Path) -> bytes:
    """A submitted file's bytes, or SubmissionError with a message for the learner (checked before any task)."""
    from llmstudy.grader.extract import SubmissionError
    if path.is_symlink() or path.parent.is_symlink():
        raise SubmissionError(f"{path.name} is a symbolic link (or in a linked folder); submit the file itself")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SubmissionError(f"{path.name} is {size >> 20} MB; clear the notebook's outputs and submit again")
    return path.read_bytes()


class _PointsCounter:
    def __init__(self):
        self.total = 0.0

    def pytest_configure(self, config):
        for line in ("points(n): points this test is worth", "public: part of the learner's self-check",
                     "concepts(*ids): the deck concepts a failure of this test points to"):
            config.addinivalue_line("markers", line)

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("points")
            self.total += float(marker.args[0]) if marker else 1.0


def exercise_max_score(exercise_id: str) -> float:
    """The points an exercise's hidden graders are worth (as grader.runner counts them), without running them."""
    import contextlib
    import io

    import pytest

    from llmstudy.grader.runner import PYTEST_ARGS
    counter = _PointsCounter()
    with contextlib.redirect_stdout(io.StringIO()):
        # grader.runner's arguments: --assert=plain above all (a grader module imported here with rewritten asserts
        # would keep them in this process, and its messages would then show the hidden tests' values)
        code = pytest.main([str(by_id(exercise_id).grader_path), "--collect-only", *PYTEST_ARGS],
                           plugins=[counter])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        raise RuntimeError(f"the graders for {exercise_id} could not be collected (exit {code})")
    return counter.total


def sandbox_mode(allow_unsandboxed: bool, warn=print) -> bool:
    """True if learner code will be isolated on this machine; SandboxUnavailable if it can't be and that wasn't
    allowed."""
    from llmstudy.grader.sandbox import SandboxUnavailable, isolation_problem
    problem = isolation_problem()
    if problem is None:
        return True
    if not allow_unsandboxed:
        raise SandboxUnavailable(f"can't isolate learner code: {problem}. Grade as root on Linux, or pass "
                                 "--allow-unsandboxed to run it with only separate processes and rlimits")
    from llmstudy.grader.sandbox import python_readable_by_others
    as_root = os.geteuid() == 0 and not python_readable_by_others() if hasattr(os, "geteuid") else False
    warn(f"warning: grading WITHOUT isolation ({problem}); learner code can read files and use the network"
         + ("; it also runs as root, because other users can't read this Python installation" if as_root else ""))
    return False


# --- the journal: nothing lost when the grader stops --------------------------------------------------------------
def journal_path(out: Path) -> Path:
    """The journal beside results.json: results.journal.jsonl."""
    out = Path(out)
    return out.with_name(out.stem + ".journal.jsonl")


class Journal:
    """JSON lines: a header with the options that change scores, then one record per graded file, as it arrives.

    {"journal": "llmstudy grade", "options": {...}}
    {"student": "ana", "exercise": "attention", "sha256": "...", "result": {...ExerciseResult...}}"""

    def __init__(self, path: Path, options: dict, resume: bool):
        self.path = Path(path)
        self.kept: dict[tuple[str, str], tuple[str, ExerciseResult]] = {}
        if resume and self.path.exists():
            self.kept = self._read(options)
            self._file = self.path.open("a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
            self._append({"journal": "llmstudy grade", "options": options})
        self._lock = threading.Lock()

    def _read(self, options: dict) -> dict:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        if header.get("options") != options:
            raise JournalMismatch(f"{self.path} was written with other options ({header.get('options')}, now "
                                  f"{options}); rerun with the same options, or without --resume to start over")
        kept = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue      # the grader was killed while writing this line; its file is graded again
            kept[(row["student"], row["exercise"])] = (row["sha256"], ExerciseResult.from_dict(row["result"]))
        return kept

    def resumed(self, student: str, exercise: str, sha256: str) -> ExerciseResult | None:
        digest, result = self.kept.get((student, exercise), (None, None))
        return result if digest == sha256 else None

    def write(self, student: str, exercise: str, sha256: str, result: ExerciseResult) -> None:
        with self._lock:
            self._append({"student": student, "exercise": exercise, "sha256": sha256, "result": result.to_dict()})

    def _append(self, row: dict) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# --- grading ------------------------------------------------------------------------------------------------------
def grade_class(submissions_dir: Path, **options) -> ClassResult:
    """Grade SUBMISSIONS/<student>/<file> for every student and exercise (options: see grade_entries)."""
    submissions_dir = Path(submissions_dir)
    options["hide"] = tuple(options.get("hide", ())) + (str(submissions_dir.resolve()),)
    return grade_entries(find_submissions(submissions_dir), **options)


def grade_entries(entries: list[Entry], workers: int | None = None, scheduler: str | None = None,
                  device: str = "cpu", progress=True, allow_unsandboxed: bool = False, timeout: float = 20.0,
                  budget: float | None = None, hide: tuple[str, ...] = (), console=None,
                  journal: Path | None = None, resume: bool = False) -> ClassResult:
    """Grade (student, exercise id, file or None) entries; students in entry order.

    workers: processes of the LocalCluster started here (default: one per core), or scheduler: the address of an
    existing Dask cluster (tcp://HOST:8786). timeout: CPU seconds per call into learner code; budget: wall seconds
    for all of one submission's calls (default 10 x timeout); hide: more paths the learner's code must not see (the
    submissions' folders always are). journal: a JSON-lines file that gets each record as it arrives; resume:
    keep the records already in it and grade only what is missing."""
    def warn(line: str) -> None:           # one line each, however narrow the terminal: logs and tests grep them
        if console is None:
            print(line)
        else:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    if scheduler is None:
        from llmstudy.models import resolve_device
        sandboxed = sandbox_mode(allow_unsandboxed, warn)     # refuse here, in one line, before starting anything
        if device != "auto":
            device = resolve_device(device)                    # "auto" is resolved on each worker, where torch is
    else:
        from llmstudy.grader.cluster import check_address
        check_address(scheduler)
        sandboxed = True                                       # each remote worker checks for itself
    hidden = set(hide) | {str(Path(f).resolve().parent) for _, _, f in entries if f is not None}
    settings = Settings(device=device, sandboxed=sandboxed, allow_unsandboxed=allow_unsandboxed, timeout=timeout,
                        budget=budget or 10 * timeout, hide=tuple(sorted(hidden)), batch=os.urandom(6).hex())
    book = Journal(journal, {"timeout": settings.timeout, "budget": settings.budget}, resume) if journal else None
    kept = book.kept if book else {}
    files = [e for e in entries if e[2] is not None]
    starting = None
    if any((student, ex_id) not in kept for student, ex_id, _ in files):
        n = max(1, min(workers or os.cpu_count() or 1, len(files)))
        warm = None
        if scheduler is None and workers is None:
            from llmstudy.grader.warm import running
            warm = running()                              # this user's `llmstudy serve`: no start-up to pay
        starting = _Starting(scheduler, n, settings, warm)     # the cluster starts while the class is read

    try:
        records: dict[int, ExerciseResult] = {}
        tasks: dict[int, tuple[Task, str]] = {}
        for i, (student, ex_id, path) in enumerate(entries):
            record, task, digest = _read_entry(student, ex_id, path, settings.plugin_name)
            if task is not None and book and (old := book.resumed(student, ex_id, digest)) is not None:
                record = old
            if record is not None:
                records[i] = record
            else:
                tasks[i] = (task, digest)
        if book and kept:
            warn(f"resumed: {len(entries) - len(tasks)} of {len(entries)} records from {book.path}; "
                 f"grading {len(tasks)}")
        if tasks:
            client = starting.client()
            if starting.note:
                warn(starting.note)
            for i, result in _with_progress(_run(client, tasks), len(tasks), progress, console, entries):
                if math.isnan(result.max_score):    # rare (a worker died or could not count): points before the journal
                    result = _scored({**records, i: result})[i]
                records[i] = result
                if book:
                    task, digest = tasks[i]
                    book.write(task.student, task.exercise, digest, result)
    finally:
        if starting is not None:
            starting.close()
        if book:
            book.close()
    return assemble(entries, _scored(records))


def _read_entry(student, ex_id, path, setup) -> tuple[ExerciseResult | None, Task | None, str]:
    """(the record, if no worker is needed; else the task; and the file's sha256). A record made here has no max
    score yet (NaN): _scored gives it one."""
    from llmstudy.grader.extract import SubmissionError
    if path is None:
        ex = by_id(ex_id)
        return ExerciseResult(ex_id, "", "missing", 0.0, math.nan,
                              f"no {ex.stem}.ipynb or {ex.stem}.py was submitted"), None, ""
    path = Path(path)
    try:
        data = read_submission(path)
    except (SubmissionError, OSError) as exc:
        return ExerciseResult(ex_id, path.name, "error", 0.0, math.nan, str(exc)), None, ""
    return None, Task(student, ex_id, path.name, data, setup), hashlib.sha256(data).hexdigest()


def _scored(records: dict[int, ExerciseResult]) -> dict[int, ExerciseResult]:
    """The records, each with its exercise's points. Workers count them where the graders run (grader.cluster), so
    every record they return carries them; a record without them (NaN: a missing file, a worker that died or could
    not count them) takes them from another record of its exercise. Only an exercise that no record has them for is
    counted here, which imports torch and the graders into this process (~2 s): grading a class needs neither."""
    known = {r.exercise: r.max_score for r in records.values() if not math.isnan(r.max_score)}
    for ex_id in {r.exercise for r in records.values()} - set(known):
        known[ex_id] = exercise_max_score(ex_id)
    return {i: r if not math.isnan(r.max_score) else dataclasses.replace(r, max_score=known[r.exercise])
            for i, r in records.items()}


class _Starting:
    """Connects to (or starts) the cluster and registers this batch's GradingSetup, in a thread. Given the address of
    a warm cluster (grader.warm) it tries that first, and starts a fresh one if it can't take the batch; `note` then
    says which it was, for the caller to print."""

    def __init__(self, scheduler: str | None, workers: int, settings: Settings, warm: str | None = None):
        self.scheduler, self.settings, self.warm = scheduler, settings, warm
        self._client = self._cluster = self._error = None
        self._registered = False
        self.note: str | None = None
        self._thread = threading.Thread(target=self._start, args=(workers,), daemon=True)
        self._thread.start()

    def _start(self, workers: int) -> None:
        from llmstudy.grader.cluster import check_code, connect
        try:
            if self.warm is not None and self._on_warm():
                return
            self._client, self._cluster = connect(self.scheduler, workers, device=self.settings.device)
            if self._cluster is None:
                check_code(self._client, self.scheduler)     # a warm or remote cluster may hold older graders
            from llmstudy.grader.worker import GradingSetup    # imports distributed: after connect() started
            self._client.register_plugin(GradingSetup(self.settings))
            self._registered = True
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def _on_warm(self) -> bool:
        """Whether this batch is registered on the warm cluster; if not, `note` says why."""
        from llmstudy.grader.cluster import ClusterUnavailable, connect, stale_workers
        from llmstudy.grader.worker import GradingSetup
        why = None
        try:
            self._client, _ = connect(self.warm)
            stale, total = stale_workers(self._client)
            if stale:
                why = f"{stale} of its {total} workers imported other grading code (restart it)"
            else:
                self._client.register_plugin(GradingSetup(self.settings))
        except (ClusterUnavailable, OSError, TimeoutError) as exc:
            why = f"it did not answer ({type(exc).__name__})"
        if why is None:
            self.scheduler, self._registered = self.warm, True
            self.note = f"grading on the warm cluster of `llmstudy serve` at {self.warm} (--workers N starts a fresh one)"
            return True
        if self._client is not None:
            self._client.close()
            self._client = None
        self.note = f"not grading on the warm cluster at {self.warm}: {why}; a fresh cluster grades instead"
        return False

    def client(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        self._thread.join()
        if self._client is not None:
            if self._cluster is None and self._registered:   # someone else's cluster: its workers drop our zygotes
                try:
                    self._client.unregister_worker_plugin(self.settings.plugin_name)
                except Exception:  # noqa: BLE001 - the scheduler may be gone; nothing left to release then
                    pass
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def _submit(client, tasks: dict[int, tuple[Task, str]]) -> dict:
    """{future: entry index}: one Dask task per file, run in the order submitted (Dask's default). Students in
    order, each student's files longest first: the costly generation grades are spread over the class (two at once
    slow each other down: both read the model's 540 MB of weights at every step) and the class ends with short tasks
    on every worker, not one worker still grading a notebook while the others idle."""
    from llmstudy.grader.worker import grade_task

    students = {task.student: n for n, (task, _) in enumerate(tasks.values())}      # each student's last position

    def order(item) -> tuple:
        task = item[1][0]
        return students[task.student], -by_id(task.exercise).grading_cost
    return {client.submit(grade_task, task, pure=False,
                          key=f"llmstudy-grade-{task.exercise}-{i}-{os.urandom(4).hex()}"): i
            for i, (task, _) in sorted(tasks.items(), key=order)}


def _run(client, tasks: dict[int, tuple[Task, str]]):
    """(entry index, ExerciseResult) as each task finishes, in any order."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = _submit(client, tasks)
    for future in as_completed(futures):
        i = futures[future]
        task = tasks[i][0]
        try:
            yield i, future.result()
        except KilledWorker as exc:
            yield i, ExerciseResult(task.exercise, task.filename, "error", 0.0, math.nan,
                                    f"the process grading this file died {ALLOWED_FAILURES + 1} times (the last "
                                    f"on {exc.last_worker.address}); it may use more memory than a worker has")
        except Exception as exc:  # noqa: BLE001 - the scheduler or the connection is gone
            done = sum(f.done() and f.status == "finished" for f in futures)
            raise ClusterUnavailable(f"lost the Dask cluster ({type(exc).__name__}: {exc}) after {done} of "
                                     f"{len(futures)} files; rerun with --resume to grade only the rest") from None


def _with_progress(results, total: int, show: bool, console, entries):
    if not show:
        yield from results
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    columns = (TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as bar:
        job = bar.add_task("", total=total)
        for i, result in results:
            bar.update(job, advance=1, description=f"{entries[i][0]} / {entries[i][1]}: {result.status}")
            yield i, result


def assemble(entries: list[Entry], records: dict[int, ExerciseResult]) -> ClassResult:
    """The class from per-entry records, students and their exercises in entry order."""
    students: dict[str, list[ExerciseResult]] = {}
    for i, (student, _, _) in enumerate(entries):
        students.setdefault(student, []).append(records[i])
    return ClassResult([StudentResult(student, recs) for student, recs in students.items()])

