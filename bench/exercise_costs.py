"""Per-exercise cost of grading one correct submission, sandboxed, against the model compute it needs (the limit).

    .venv/bin/python bench/exercise_costs.py [--repeats 3] [--student examples/class/ada]

One sandbox worker grades the student's five files once to warm up (imports, references, the generate() oracle:
work done once per worker), then `--repeats` more times. Everything runs on one thread and one process is busy at a
time (the grader waits while the child runs, the child waits while the grader serves its model calls), so wall
seconds are core-seconds. For each exercise it reports:
  - cold: core-seconds per submission (median over repeats), open + grade + close, with the worker's ForwardMemo
    emptied first (grader/forward_memo.py), i.e. a submission whose model calls no earlier one made;
  - the forward passes ("decoding steps") and token positions its tests made the model compute for the learner's
    code, from the submission's model server;
  - the limit: the same forward passes replayed on the model alone, in this run (a fresh ModelServer without memo fed
    the same requests: only the model's compute and its KV cache), and the ratio of cold to it;
  - warm: the same submission graded again right after, its forward passes served by the memo (what the second and
    later submissions making the same calls cost: every correct one's greedy steps), and the passes still computed.
Exercises without learner model calls have no such limit (their oracles are cheap tensor maths) and report "-".
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def measure(student: Path, repeats: int = 3, sandboxed: bool = True) -> dict:
    import torch
    torch.set_num_threads(1)
    from llmstudy.grader import forward_memo, runner
    from llmstudy.grader.extract import extract
    from llmstudy.grader.model_server import ModelServer
    from llmstudy.grader.sandbox import Limits, SandboxWorker
    from llmstudy.catalog import EXERCISES

    start = time.perf_counter()
    worker = SandboxWorker(sandboxed=sandboxed, limits=Limits(call_timeout=60, budget=600))
    startup = time.perf_counter() - start
    files = {}
    for ex in EXERCISES:
        for suffix in (".py", ".ipynb"):
            if (student / f"{ex.stem}{suffix}").exists():
                files[ex.id] = student / f"{ex.stem}{suffix}"
                break
    rows: dict[str, dict] = {ex: {"seconds": [], "warm_seconds": [], "score": None} for ex in files}
    requests: dict[str, list] = {}
    runs = [(round_, ex, path, warm) for round_ in range(repeats + 1) for ex, path in files.items()
            for warm in ((False,) if round_ == 0 else (False, True))]       # round 0 warms up
    for round_, ex, path, warm in runs:                   # each file cold, then at once warm
        if not warm:
            forward_memo.PER_WORKER.clear()
        log: list = []
        original = ModelServer.forward_rows           # every request, the learner's and the graders', comes here

        def recording(self, name, input_ids, past=None, _log=log, _orig=original, **options):
            ids = input_ids.clone() if isinstance(input_ids, torch.Tensor) else input_ids
            logits, rows, handle = _orig(self, name, input_ids, past, **options)
            _log.append((name, ids, past, handle))
            return logits, rows, handle

        ModelServer.forward_rows = recording
        try:
            t = time.perf_counter()
            sub = worker.open(ex, extract(path), path.name)
            result = runner.grade(ex, sub)
            sub.close()
            seconds = time.perf_counter() - t
        finally:
            ModelServer.forward_rows = original
        if round_:
            rows[ex]["warm_seconds" if warm else "seconds"].append(seconds)
        if warm:
            rows[ex]["warm_runs"] = sub.server.stats.runs
            continue
        rows[ex].update(score=result.score, max_score=result.max_score, runs=sub.server.stats.runs,
                        positions=sub.server.stats.positions_computed)
        requests[ex] = log
    worker.close()
    for ex, row in rows.items():
        row["core_seconds"] = statistics.median(row.pop("seconds"))
        row["warm_core_seconds"] = statistics.median(row.pop("warm_seconds"))
        row["limit_seconds"] = _replay(requests[ex]) if requests[ex] else None
        row["ratio"] = row["core_seconds"] / row["limit_seconds"] if row["limit_seconds"] else None
    total = sum(r["core_seconds"] for r in rows.values())
    return {"student": str(student), "repeats": repeats, "sandboxed": sandboxed, "worker_start_seconds": startup,
            "exercises": rows, "total_core_seconds": total,
            "total_warm_core_seconds": sum(r["warm_core_seconds"] for r in rows.values()),
            "total_limit_seconds": sum(r["limit_seconds"] or 0 for r in rows.values())}


def _replay(requests: list) -> float:
    """The model alone: the same requests on a fresh server (past handles mapped to the replay's), timed."""
    from llmstudy.grader.model_server import ModelServer
    best = float("inf")
    for _ in range(3):                                    # best of three: the limit is what the model can do
        server, handles = ModelServer("cpu", memo=None), {}
        for name, ids, past, original in requests:
            _, handles[original] = server.forward(name, ids, handles.get(past))
        best = min(best, server.stats.model_seconds)
    return best


def markdown(r: dict) -> str:
    lines = ["| exercise | score | cold core-s / submission | forward passes | token positions | model alone (limit) s "
             "| cold / limit | warm core-s | warm forward passes |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ex, row in r["exercises"].items():
        limit = f"{row['limit_seconds']:.2f}" if row["limit_seconds"] else "-"
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        lines.append(f"| {ex} | {row['score']:g}/{row['max_score']:g} | {row['core_seconds']:.2f} | {row['runs']} | "
                     f"{row['positions']} | {limit} | {ratio} | {row['warm_core_seconds']:.2f} | "
                     f"{row.get('warm_runs', 0)} |")
    lines.append(f"| **all five** | | **{r['total_core_seconds']:.2f}** | | | {r['total_limit_seconds']:.2f} | | "
                 f"**{r['total_warm_core_seconds']:.2f}** | |")
    lines.append(f"\nSandbox worker start (zygote: torch, transformers, tokenizers; no models): "
                 f"{r['worker_start_seconds']:.1f} s.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default=str(HERE.parent / "examples" / "class" / "ada"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--allow-unsandboxed", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    result = measure(Path(args.student), args.repeats, sandboxed=not args.allow_unsandboxed)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
