"""Writers for a graded batch (the results.json structure from grader.batch): JSON, CSV, Gradescope, HTML feedback,
and the summary table printed at the end of `llmstudy grade`.

Only what the results hold is written: test names, scores and the learner-facing messages. Hidden tests' code
never appears, and every string from a submission (student names, messages) is escaped in HTML.
"""
from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

STATUSES = ("graded", "missing", "error", "timeout")


def safe_name(student: str) -> str:
    """A file name for a student id: letters, digits, '-', '_' and '.' kept, everything else '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", student).lstrip(".")
    return name or "_"


def _unique_names(results: dict) -> dict[str, str]:
    names: dict[str, str] = {}
    taken: set[str] = set()
    for sub in results["submissions"]:
        base = name = safe_name(sub["student"])
        n = 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names[sub["student"]] = name
    return names


def _points(x: float) -> str:
    return f"{x:g}"


def exercise_ids(results: dict) -> list[str]:
    ids: dict[str, None] = {}
    for sub in results["submissions"]:
        for ex in sub["exercises"]:
            ids.setdefault(ex["exercise"], None)
    return list(ids)


def write_json(results: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(results: dict, path: Path) -> None:
    """One row per student, one column per exercise (its score), and the total."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = exercise_ids(results)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["student", *ids, "total"])
        for sub in results["submissions"]:
            scores = {ex["exercise"]: ex["score"] for ex in sub["exercises"]}
            writer.writerow([sub["student"], *(_points(scores[i]) if i in scores else "" for i in ids),
                             _points(sub["score"])])


def gradescope_results(submission: dict) -> dict:
    """Gradescope's autograder results.json for one student (gradescope-autograders.readthedocs.io/en/latest/specs):
    one test entry per hidden test, plus one per exercise that could not be graded."""
    tests = []
    for ex in submission["exercises"]:
        if ex["tests"]:
            for t in ex["tests"]:
                tests.append({"name": f"{ex['exercise']}: {t['name']}", "score": t["score"],
                              "max_score": t["max_score"], "status": "passed" if t["passed"] else "failed",
                              "output": t["message"], "visibility": "visible"})
        else:
            tests.append({"name": f"{ex['exercise']}: {ex['status']}", "score": ex["score"],
                          "max_score": ex["max_score"], "status": "failed", "output": ex["message"],
                          "visibility": "visible"})
    summary = "\n".join(f"{ex['exercise']}: {ex['status']}, {_points(ex['score'])}/{_points(ex['max_score'])}"
                        f" - {ex['message']}" for ex in submission["exercises"])
    return {"score": submission["score"], "output": summary, "tests": tests}


def write_gradescope(results: dict, folder: Path) -> list[Path]:
    """DIR/<student>/results.json for each student."""
    names = _unique_names(results)
    written = []
    for sub in results["submissions"]:
        path = Path(folder) / names[sub["student"]] / "results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(gradescope_results(sub), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
.pass { color: #176b2c; } .fail { color: #a1161b; } .status { font-weight: 600; }
.msg { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .9em; }
"""


def feedback_html(submission: dict) -> str:
    """One student's page: each exercise's status and message, each test's outcome and message."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Feedback: {e(submission['student'])}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Feedback for {e(submission['student'])}</h1>",
             f"<p>Total: <b>{_points(submission['score'])} / {_points(submission['max_score'])}</b></p>"]
    for ex in submission["exercises"]:
        parts.append(f"<h2>{e(ex['exercise'])} <small>({e(ex['file'] or 'no file')})</small></h2>")
        parts.append(f"<p><span class='status'>{e(ex['status'])}</span>: {_points(ex['score'])} / "
                     f"{_points(ex['max_score'])} &mdash; <span class='msg'>{e(ex['message'])}</span></p>")
        if ex["tests"]:
            parts.append("<table><tr><th>test</th><th>result</th><th>points</th><th>message</th></tr>")
            for t in ex["tests"]:
                outcome = "<span class='pass'>passed</span>" if t["passed"] else "<span class='fail'>failed</span>"
                parts.append(f"<tr><td>{e(t['name'])}</td><td>{outcome}</td>"
                             f"<td>{_points(t['score'])} / {_points(t['max_score'])}</td>"
                             f"<td class='msg'>{e(t['message'])}</td></tr>")
            parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_feedback(results: dict, folder: Path) -> list[Path]:
    """DIR/<student>.html for each student."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = _unique_names(results)
    written = []
    for sub in results["submissions"]:
        path = folder / f"{names[sub['student']]}.html"
        path.write_text(feedback_html(sub), encoding="utf-8")
        written.append(path)
    return written


def summary_table(results: dict):
    """A rich Table: per exercise, how many submissions had each status and the mean score."""
    from rich.table import Table

    table = Table(title=f"{len(results['submissions'])} students graded")
    table.add_column("exercise")
    for status in STATUSES:
        table.add_column(status, justify="right")
    table.add_column("mean score", justify="right")
    for ex_id in exercise_ids(results):
        rows = [ex for sub in results["submissions"] for ex in sub["exercises"] if ex["exercise"] == ex_id]
        counts = [sum(r["status"] == s for r in rows) for s in STATUSES]
        mean = sum(r["score"] for r in rows) / len(rows)
        table.add_row(ex_id, *(str(c) for c in counts), f"{mean:.2f} / {_points(rows[0]['max_score'])}")
    totals = [s["score"] for s in results["submissions"]]
    if totals:
        table.add_section()
        table.add_row("total", "", "", "", "", f"{sum(totals) / len(totals):.2f} / {_points(results['max_score'])}")
    return table
