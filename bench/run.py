"""Benchmark: seconds per submission, `llmstudy grade` against plain `nbgrader autograde`, on the same notebooks.

    .venv/bin/python bench/run.py --students 8 [--workers N] [--nbgrader-students K] [--repeat R] [--warm] [--keep DIR]

1. `llmstudy nbgrader init` builds the course, `nbgrader generate_assignment` the student release;
2. bench/generate_class.py writes a deterministic class (correct / buggy / stub notebooks);
3. timed, each as the instructor would type it, wall clock from start to exit:
   a. `llmstudy grade CLASS`                          (sandboxed, --workers in parallel)
   b. `llmstudy grade --nbgrader COURSE`              (the same, plus writing nbgrader's gradebook)
   w. with --warm, `llmstudy grade CLASS` (as in a, without --workers) while `llmstudy serve` runs (grader/warm.py),
      which it then grades on,
      after one batch of another class (another seed) that warms its workers: what a class costs once the ~10 s
      of start-up is paid
   c. `nbgrader autograde week1` on a copy of COURSE  (one kernel per notebook, one notebook at a time)
   (a), (b) and (c) run in rounds: round r runs (a), then (b), then nbgrader on the r-th share of its students, so a
   VM that speeds up or slows down during the benchmark slows both sides of a round alike;
4. checks that (b) and (c) give every student the same score (they run the same hidden tests), and writes
   bench/results/<date>-<host>.json and .md.

Each row also gives the seconds to the first record (start-up), the machine's busy core-seconds per submission and
the share of CPU time the hypervisor stole meanwhile: a noisy neighbour on a shared VM slows a run without raising
its load average, and core-seconds are not counted while stolen.

--repeat R runs (a), (b) and (w) R times and reports the median, with the fastest and slowest: on a shared 2-core VM one
run of a 20 s class varies by +-3 s, and in the same hour by up to 1.4x (24.6 -> 34.7 s, 2026-12-03). nbgrader's
students are split over the R rounds, each share in a copy of COURSE of its own (one `nbgrader autograde` per round,
each paying nbgrader's own start-up of a few seconds). "vs nbgrader" divides by nbgrader's seconds per submission
over all rounds; "same round" is the median over rounds of the ratio within a round, the figure a drifting VM moves
least. With R above K, the last rounds have no nbgrader share and no same-round ratio.

A submission is one student's assignment: one notebook per exercise. --nbgrader-students K times nbgrader on the
first K students only (its cost per notebook doesn't depend on the class size: every notebook gets a fresh kernel).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from generate_class import generate_class  # noqa: E402

from llmstudy.grader import nbgrader as nbg  # noqa: E402
from llmstudy.catalog import EXERCISES  # noqa: E402

ASSIGNMENT = "week1"


@contextlib.contextmanager
def warm_cluster(llmstudy: str, workers: int, work: Path):
    """`llmstudy serve` on a free port for the block; yields its address. Its credentials file goes in a cache folder
    of the benchmark's own that links the real one's models (so a running user's warm cluster is left alone), and
    the grade commands find it through LLMSTUDY_CACHE."""
    from llmstudy import models
    cache = work / "warm-cache"
    cache.mkdir()
    for entry in models.cache_dir().iterdir():
        if entry.name != "warm-cluster.json":
            (cache / entry.name).symlink_to(entry)
    before = os.environ.get(models.CACHE_ENV)
    os.environ[models.CACHE_ENV] = str(cache)              # run() passes the environment on
    out = work / "serve.out"
    proc = subprocess.Popen([llmstudy, "serve", "--workers", str(workers), "--port", "0"], env=dict(os.environ),
                            stdout=out.open("w"), stderr=(work / "serve.err").open("w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (address := next((w for w in out.read_text().split() if w.startswith("tls://")), None)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"llmstudy serve did not start:\n{(work / 'serve.err').read_text()[-3000:]}")
            time.sleep(0.2)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        if before is None:
            os.environ.pop(models.CACHE_ENV, None)
        else:
            os.environ[models.CACHE_ENV] = before


def warm_up_class(course: Path, students: int, seed: int, work: Path) -> Path:
    """Another class of the same size (another seed: other mutants, other students' variants), for the batch that
    warms the warm cluster's workers up. Warming up on the class that is then timed would flatter the warm row: a
    worker's forward memo (grader/forward_memo.py) keeps every step it computed, so the timed batch would find the
    buggy submissions' own steps there too, where a new class finds only the correct ones' (the reference's)."""
    other = work / "warm-up-course"
    shutil.copytree(course, other)
    shutil.rmtree(other / "submitted", ignore_errors=True)
    generate_class(other, students, ASSIGNMENT, plain=work / "warm-up-class", seed=seed)
    return work / "warm-up-class"


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, stolen) clock ticks of all CPUs so far, from /proc/stat; None off Linux. Busy is user + nice + system +
    irq + softirq: what every process on the machine used, grading's forkserver, workers and sandboxed children
    included, which no rusage of ours can see (they are not our waited-for children)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return user + nice + system + irq + softirq, steal


class Timing(dict):
    """One command's figures: seconds (wall), core_seconds (busy CPU of the whole machine meanwhile), steal (the
    share of CPU time the hypervisor gave to other guests: a VM's noisy neighbours slow a run without showing in its
    load), first_record (seconds until the journal's first record, for `llmstudy grade`: its start-up)."""


def run(cmd: list[str], cwd: Path | None = None, log: Path | None = None, journal: Path | None = None) -> Timing:
    """Run cmd to completion; its Timing. Output goes to `log`; a failure stops the benchmark. With `journal`, the
    time its second line (the first record, after the header) appears is noted, polled every 20 ms."""
    env = dict(nbg.nbgrader_env(), HF_HUB_OFFLINE="1")
    first: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            try:
                with open(journal, "rb") as f:
                    if f.read().count(b"\n") >= 2:
                        first.append(time.perf_counter() - start)
                        return
            except OSError:
                pass

    if journal is not None:
        journal.unlink(missing_ok=True)              # the last run's: the command writes it anew (no --resume)
    jiffies, start = cpu_jiffies(), time.perf_counter()
    watcher = threading.Thread(target=watch, daemon=True) if journal is not None else None
    if watcher is not None:
        watcher.start()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = cpu_jiffies()
    done.set()
    if log is not None:
        log.write_text(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    timing = Timing(seconds=seconds, core_seconds=None, steal=None, first_record=first[0] if first else None)
    if jiffies and after:
        tick = os.sysconf("SC_CLK_TCK")
        busy, stolen = after[0] - jiffies[0], after[1] - jiffies[1]
        timing.update(core_seconds=busy / tick, steal=stolen / max(1, busy + stolen))
    return timing


def machine() -> dict:
    import torch

    cpu = platform.processor()
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    import nbgrader
    return {"host": socket.gethostname(), "os": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "memory": memory, "python": platform.python_version(), "torch": torch.__version__,
            "nbgrader": nbgrader.__version__, "cuda": torch.cuda.is_available()}


def exported_scores(course: Path) -> dict[str, float]:
    proc = nbg.run_nbgrader(course, "export", "--to", "grades.csv")
    if proc.returncode != 0:
        raise SystemExit(f"nbgrader export failed in {course}:\n{proc.stderr[-3000:]}")
    with open(course / "grades.csv", newline="") as f:
        return {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}


def shares(students: list[str], rounds: int) -> list[list[str]]:
    """`students` in `rounds` consecutive shares, as even as they go; rounds beyond len(students) get none."""
    n = min(rounds, len(students))
    return [students[len(students) * i // n:len(students) * (i + 1) // n] for i in range(n)] + [[]] * (rounds - n)


def nbgrader_course(course: Path, students: list[str], folder: Path) -> Path:
    """A copy of `course` whose submitted/ holds only `students`: what one round's `nbgrader autograde` grades."""
    shutil.copytree(course, folder)
    for entry in (folder / "submitted").iterdir():
        if entry.name not in students:
            shutil.rmtree(entry)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--nbgrader-students", type=int, default=None, help="time nbgrader on the first K only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="run llmstudy's commands R times; report the median")
    parser.add_argument("--keep", default=None, help="work in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--allow-unsandboxed", action="store_true", help="pass through to llmstudy grade")
    parser.add_argument("--warm", action="store_true",
                        help="also time `llmstudy grade` while `llmstudy serve` keeps a warm cluster")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)   # progress lines show up even when redirected to a file

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="llmstudy-bench-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    llmstudy = str(Path(sys.executable).parent / "llmstudy")
    course, klass = work / "course", work / "class"
    extra = ["--allow-unsandboxed"] if args.allow_unsandboxed else []

    exercises = [e for e in EXERCISES if e.notebook_path.exists() and e.solution_path.exists()
                 and e.grader_path.exists()]
    print(f"work folder: {work}\nexercises: {', '.join(e.id for e in exercises)}")
    run([llmstudy, "nbgrader", "init", str(course), "--assignment", ASSIGNMENT, "--course-id", "bench",
         *[a for e in exercises for a in ("--exercise", e.id)]])
    run([sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT], cwd=course)
    manifest = generate_class(course, args.students, ASSIGNMENT, plain=klass, seed=args.seed)
    k = args.nbgrader_students or args.students
    rounds = shares(sorted(manifest)[:k], args.repeat)
    plains = [nbgrader_course(course, share, work / f"nbgrader-plain-{r + 1}") if share else None
              for r, share in enumerate(rounds)]
    mix: dict[str, int] = {}
    for per_student in manifest.values():
        for entry in per_student.values():
            mix[entry["variant"]] = mix.get(entry["variant"], 0) + 1
    print(f"class: {args.students} students x {len(exercises)} notebooks ({mix})")

    timings, spread = {}, {}
    load_before = os.getloadavg()
    commands = {
        "llmstudy grade": [llmstudy, "grade", str(klass), "--out", str(work / "llmstudy.json"),
                           "--workers", str(args.workers), "--device", "cpu", *extra],
        "llmstudy grade --nbgrader": [llmstudy, "grade", "--nbgrader", str(course), "--assignment", ASSIGNMENT,
                                      "--out", str(work / "llmstudy-nbgrader.json"), "--workers", str(args.workers),
                                      "--device", "cpu", *extra]}
    details: dict[str, Timing] = {}
    by_round: dict[str, list[Timing]] = {name: [] for name in [*commands, "nbgrader autograde"]}
    for r, (share, plain) in enumerate(zip(rounds, plains)):
        print(f"round {r + 1}/{args.repeat}:")
        for letter, (name, cmd) in zip("ab", commands.items()):
            print(f"  {letter}. {name} ({args.workers} workers) ...")
            log = work / ("llmstudy-nbgrader.log" if "--nbgrader" in name else "llmstudy.log")
            out_json = Path(cmd[cmd.index("--out") + 1])
            by_round[name].append(run(cmd, log=log, journal=out_json.with_name(out_json.stem + ".journal.jsonl")))
        if share:
            print(f"  c. nbgrader autograde ({len(share)} of {k} students, sequential) ...")
            by_round["nbgrader autograde"].append(run([sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT,
                                                       "--force"], cwd=plain, log=work / f"nbgrader-{r + 1}.log"))
    for name in commands:
        runs = sorted(by_round[name], key=lambda t: t["seconds"])
        details[name] = runs[len(runs) // 2]                       # the median run's own figures (R odd)
        timings[name] = statistics.median(t["seconds"] for t in runs)
        spread[name] = (runs[0]["seconds"], runs[-1]["seconds"])
    theirs_runs = by_round["nbgrader autograde"]
    details["nbgrader autograde"] = Timing(
        seconds=sum(t["seconds"] for t in theirs_runs), first_record=None,
        core_seconds=None if None in [t["core_seconds"] for t in theirs_runs]
        else sum(t["core_seconds"] for t in theirs_runs),
        steal=None if None in [t["steal"] for t in theirs_runs] else statistics.mean(t["steal"] for t in theirs_runs))
    timings["nbgrader autograde"] = details["nbgrader autograde"]["seconds"]
    per_student = [t["seconds"] / len(share) for t, share in zip(theirs_runs, [s for s in rounds if s])]
    spread["nbgrader autograde"] = (min(per_student) * k, max(per_student) * k)
    same_round = {name: statistics.median(theirs / (ours["seconds"] / args.students)
                                          for ours, theirs in zip(by_round[name], per_student))
                  for name in commands}
    if args.warm:
        name = "llmstudy grade, llmstudy serve running (warm)"
        print(f"w. {name} ({args.workers} workers of `llmstudy serve`, one batch to warm up, {args.repeat} run(s)) ...")
        with warm_cluster(llmstudy, args.workers, work) as address:
            cmd = [llmstudy, "grade", str(klass), "--out", str(work / "llmstudy-warm.json"), "--device", "cpu",
                   *extra]                                          # no --workers: it finds the warm cluster
            out_json = Path(cmd[cmd.index("--out") + 1])
            warmup = cmd.copy()                                       # the workers' first batch: models, memo...
            warmup[warmup.index(str(klass))] = str(warm_up_class(course, args.students, args.seed + 1, work))
            run(warmup, log=work / "llmstudy-warm.log")                 # ...on another class (see warm_up_class)
            runs = sorted((run(cmd, log=work / "llmstudy-warm.log",
                               journal=out_json.with_name(out_json.stem + ".journal.jsonl"))
                           for _ in range(args.repeat)), key=lambda t: t["seconds"])
            if f"grading on the warm cluster of `llmstudy serve` at {address}" not in \
                    (work / "llmstudy-warm.log").read_text(encoding="utf-8"):
                raise SystemExit(f"the warm row did not grade on {address}: see {work / 'llmstudy-warm.log'}")
        details[name], timings[name] = runs[len(runs) // 2], statistics.median(t["seconds"] for t in runs)
        spread[name] = (runs[0]["seconds"], runs[-1]["seconds"])
    ours, theirs = exported_scores(course), {}
    for plain in filter(None, plains):
        theirs.update(exported_scores(plain))
    disagree = {s: (ours[s], theirs[s]) for s in theirs if abs(ours[s] - theirs[s]) > 1e-6}
    submissions = {"llmstudy grade": args.students, "llmstudy grade --nbgrader": args.students,
                   "llmstudy grade, llmstudy serve running (warm)": args.students, "nbgrader autograde": k}
    per_submission = {name: timings[name] / submissions[name] for name in timings}
    baseline = per_submission["nbgrader autograde"]
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "workers": args.workers, "students": args.students, "seed": args.seed,
        "exercises": [e.id for e in exercises], "variants": mix,
        "runs": {name: {"submissions": submissions[name], "notebooks": submissions[name] * len(exercises),
                        "seconds": round(timings[name], 2),
                        "seconds_min_max": [round(t, 2) for t in spread[name]], "repeats": args.repeat
                        if name != "nbgrader autograde" else len(theirs_runs),
                        "seconds_per_submission": round(per_submission[name], 3),
                        "seconds_per_notebook": round(per_submission[name] / len(exercises), 3),
                        "speedup_vs_nbgrader": round(baseline / per_submission[name], 1),
                        "speedup_vs_nbgrader_same_round": round(same_round[name], 1) if name in same_round else None,
                        **_cost(details[name], submissions[name])}
                 for name in timings},
        "scores_agree": {"students_compared": len(theirs), "disagreements": disagree},
        # other work on the machine slows every run; a load well above the core count makes the figures noisy
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}-{result['machine']['host']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"wrote {out / stem}.json and .md; work folder {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _cost(timing: Timing, submissions: int) -> dict:
    """The run's CPU figures for the results file: core-seconds per submission (the machine's busy CPU, so a VM's
    stolen time doesn't count), the steal share, and the start-up (seconds to the first record) where known."""
    out = {"first_record_seconds": None if timing["first_record"] is None else round(timing["first_record"], 2)}
    if timing["core_seconds"] is not None:
        out.update(core_seconds_per_submission=round(timing["core_seconds"] / submissions, 3),
                   steal_percent=round(100 * timing["steal"], 1))
    return out


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Grading benchmark, {r['date']}", "",
             f"{m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}; Python {m['python']}, torch {m['torch']}, "
             f"nbgrader {m['nbgrader']}, CUDA {'yes' if m['cuda'] else 'no'}.",
             f"Class: {r['students']} students x {len(r['exercises'])} notebooks ({', '.join(r['exercises'])}); "
             f"variants {r['variants']}; seed {r['seed']}. llmstudy ran {r['workers']} workers; nbgrader runs one "
             f"notebook at a time. Load average (1 min) {r['load_average_1min']['before']} before, "
             f"{r['load_average_1min']['after']} after.", "",
             "| command | submissions | wall s (median) | fastest-slowest | first record s | s / submission | "
             "s / notebook | vs nbgrader | same round | core-s / submission | CPU stolen |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def figure(value, fmt: str, unit: str = "") -> str:
        return "-" if value is None else f"{value:{fmt}}{unit}"
    for name, run_ in r["runs"].items():
        low, high = run_.get("seconds_min_max", (run_["seconds"],) * 2)
        lines.append(f"| `{name}` | {run_['submissions']} | {run_['seconds']:.1f} | "
                     f"{low:.1f}-{high:.1f} ({run_.get('repeats', 1)} "
                     f"{'rounds' if name == 'nbgrader autograde' else 'runs'}) | "
                     f"{figure(run_.get('first_record_seconds'), '.1f')} | "
                     f"{run_['seconds_per_submission']:.2f} | {run_['seconds_per_notebook']:.2f} | "
                     f"{run_['speedup_vs_nbgrader']:.1f}x | {figure(run_.get('speedup_vs_nbgrader_same_round'), '.1f', 'x')} | "
                     f"{figure(run_.get('core_seconds_per_submission'), '.2f')} | "
                     f"{figure(run_.get('steal_percent'), '.0f', '%')} |")
    lines += ["", "First record: seconds until `llmstudy grade` journalled its first result (start-up: the workers' "
              "imports, the sandbox, the first grade). Core-s: the whole machine's busy CPU time during the command "
              "(the workers and sandboxed children included), per submission; CPU stolen: the share of CPU time "
              "the hypervisor gave to other guests meanwhile, which slows a run without showing in its load. "
              "Rounds: each round ran `llmstudy grade`, `llmstudy grade --nbgrader`, then nbgrader on its share of "
              "the students; nbgrader's fastest-slowest is its per-student time of the fastest and slowest round, "
              "times its students. Same round: the median over rounds of the ratio within one round."]
    agree = r["scores_agree"]
    lines += ["", f"Scores: `llmstudy grade --nbgrader` and `nbgrader autograde` agree for "
                  f"{agree['students_compared'] - len(agree['disagreements'])}/{agree['students_compared']} students"
                  + (f"; differ: {agree['disagreements']}" if agree["disagreements"] else "") + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
