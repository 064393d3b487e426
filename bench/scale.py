"""Benchmark: how grading scales on Dask, measured here and projected to a large class on a cluster.

    .venv/bin/python bench/scale.py [--students 6] [--tasks 10000] [--out bench/results]

1. throughput: `llmstudy grade CLASS --workers W` for W = 1 and 2 on a class of copies of examples/class's ada
   (all correct) and ben (classic bugs), five files each; submissions (one student's five files) per hour per
   worker, both over the whole command (start-up included) and in the steady state (from the first journalled
   record to the last, watched as the journal grows);
2. the scheduler's own cost per task: a LocalCluster of 2 workers, one thread each, and a no-op function submitted
   --tasks times the way grader.batch submits grading tasks (one client.submit each, collected with as_completed);
3. the projection for 10,000 students on 10 machines of 16 cores (160 workers): worker start-up, then
   max(grading work / workers, scheduler cost x tasks), since the scheduler works while the workers grade.

Writes results/scale-<date>-<host>.json and .md. Other work on the machine slows every figure: note the load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


CLASS_STUDENTS, CLASS_MACHINES, CLASS_CORES = 10_000, 10, 16


def machine() -> dict:
    import platform

    import torch
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   cpu)
    memory = None
    if os.path.exists("/proc/meminfo"):
        memory = f"{int(open('/proc/meminfo').readline().split()[1]) / 2**20:.1f} GiB"
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "memory": memory,
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def build_class(folder: Path, students: int) -> int:
    """`students` copies of ada and ben in turn; returns the number of files."""
    files = 0
    for k in range(students):
        model = ("ada", "ben")[k % 2]
        shutil.copytree(ROOT / "examples" / "class" / model, folder / f"{model}{k:03d}")
        files += len(list((folder / f"{model}{k:03d}").iterdir()))
    return files


def time_grading(klass: Path, out: Path, workers: int, files: int) -> dict:
    """Wall clock of `llmstudy grade`, and when the first and the last record reached the journal."""
    journal = out / "results.journal.jsonl"
    cmd = [str(Path(sys.executable).parent / "llmstudy"), "grade", str(klass), "--out", str(out / "results.json"),
           "--workers", str(workers), "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    arrivals: list[float] = []
    while proc.poll() is None:
        if journal.exists():
            seen = len(journal.read_text().splitlines()) - 1
            arrivals += [time.perf_counter() - start] * (seen - len(arrivals))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"llmstudy grade failed:\n{proc.stderr[-3000:]}")
    if len(arrivals) < files:
        arrivals += [wall] * (files - len(arrivals))
    steady = arrivals[-1] - arrivals[0]
    return {"workers": workers, "files": files, "wall_s": round(wall, 2), "first_record_s": round(arrivals[0], 2),
            "steady_files_per_s": round((files - 1) / steady, 4) if steady > 0 else None}


def noop(x):
    return x


def scheduler_cost(tasks: int) -> dict:
    """Seconds per no-op task through a LocalCluster of 2 single-thread workers, submitted as grader.batch does."""
    import logging

    from distributed import Client, LocalCluster, as_completed
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        client.submit(noop, 0, pure=False).result()          # warm: the function is known to the workers
        start = time.perf_counter()
        futures = [client.submit(noop, i, pure=False, key=f"noop-{i}") for i in range(tasks)]
        for _ in as_completed(futures):
            pass
        seconds = time.perf_counter() - start
    return {"tasks": tasks, "seconds": round(seconds, 2), "ms_per_task": round(1000 * seconds / tasks, 3)}


def project(runs: list[dict], sched: dict, files_per_student: int) -> dict:
    """10,000 students on 10 machines x 16 cores from the 1-worker steady rate, the start-up and the scheduler."""
    one = next(r for r in runs if r["workers"] == 1)
    two = next(r for r in runs if r["workers"] == 2)
    per_file = 1 / one["steady_files_per_s"]                   # worker-seconds per file, one worker alone
    efficiency = two["steady_files_per_s"] / (2 * one["steady_files_per_s"])  # 2 workers on 2 cores vs 2 x 1
    workers = CLASS_MACHINES * CLASS_CORES
    tasks = CLASS_STUDENTS * files_per_student
    grading = tasks * per_file / workers / efficiency
    scheduling = tasks * sched["ms_per_task"] / 1000
    start_up = two["first_record_s"]
    total = start_up + max(grading, scheduling)
    return {"students": CLASS_STUDENTS, "workers": workers, "tasks": tasks,
            "worker_s_per_file": round(per_file, 3), "two_worker_efficiency": round(efficiency, 3),
            "grading_s": round(grading), "scheduler_s": round(scheduling), "start_up_s": round(start_up),
            "total_min": round(total / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    work = Path(tempfile.mkdtemp(prefix="llmstudy-scale-"))
    klass = work / "class"
    files = build_class(klass, args.students)
    runs = []
    for workers in (1, 2):
        run = time_grading(klass, work / f"out{workers}", workers, files)
        run["submissions_per_hour_per_worker"] = round(args.students / run["wall_s"] * 3600 / workers, 1)
        run["steady_submissions_per_hour_per_worker"] = round(
            run["steady_files_per_s"] * 3600 / (files / args.students) / workers, 1)
        runs.append(run)
        print(json.dumps(run))
    sched = scheduler_cost(args.tasks)
    print(json.dumps(sched))
    projection = project(runs, sched, files // args.students)
    print(json.dumps(projection))
    shutil.rmtree(work)

    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "load_average": os.getloadavg(), "class": {"students": args.students, "files": files},
              "grading": runs, "scheduler": sched, "projection": projection}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{dt.date.today().isoformat()}-{socket.gethostname()}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [f"# Grading at scale, {result['date']}", "",
             f"{m['cpu']}, {m['cores']} cores, {m['memory']}; load average {result['load_average'][0]:.1f}", "",
             "| workers | wall s | submissions/h/worker (whole run) | (steady state) |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['wall_s']} | {r['submissions_per_hour_per_worker']} | "
              f"{r['steady_submissions_per_hour_per_worker']} |" for r in runs]
    lines += ["", f"scheduler: {sched['ms_per_task']} ms per no-op task over {sched['tasks']} tasks", "",
              f"projection, {projection['students']} students on {projection['workers']} workers: "
              f"{projection['total_min']} min (grading {projection['grading_s']} s, scheduler "
              f"{projection['scheduler_s']} s, start-up {projection['start_up_s']} s)", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
