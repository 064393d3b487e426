"""Grades feed memory: grader tests name deck concepts, and `llmstudy review --from-results` brings the cards of a
learner's failed tests forward in their queue."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from fsrs import Rating, State

from llmstudy import cli
from llmstudy.cards import grades
from llmstudy.cards import review as rv
from llmstudy.cards.data import load_concepts
from llmstudy.cards.store import SCHEMA_VERSION, Store
from llmstudy.catalog import EXERCISES

JST = timezone(timedelta(hours=9))
MONDAY_9AM = datetime(2026, 1, 5, 9, 0, tzinfo=JST)
TOP_P_TEST = "test_top_p_keeps_the_token_that_crosses_p"


# --- the markers (CI) -------------------------------------------------------------------------------------------
def test_every_grader_test_names_concepts_and_every_name_is_a_deck_concept():
    ids = {c.id for c in load_concepts()}
    marked = grades.marked_concepts()
    assert {ex for ex, _ in marked} == {e.id for e in EXERCISES}
    unmarked = sorted(f"{ex}::{name}" for (ex, name), cs in marked.items() if not cs)
    unknown = sorted(f"{ex}::{name}: {c}" for (ex, name), cs in marked.items() for c in cs if c not in ids)
    assert unmarked == [], "add @pytest.mark.concepts(...) to these grader tests"
    assert unknown == [], "these markers name no concept in cards/concepts (see `llmstudy cards list`)"


def test_the_parsed_markers_are_the_ones_pytest_collects(tmp_path):
    """The AST reading agrees with pytest's own view of the markers on a small grader file."""
    (tmp_path / "test_sampling.py").write_text(
        "import pytest\n\n@pytest.mark.concepts('top-p-sampling', 'temperature')\n@pytest.mark.points(2)\n"
        "def test_a():\n    pass\n\n@pytest.mark.points(1)\ndef test_b():\n    pass\n", encoding="utf-8")
    marked = grades.marked_concepts(tmp_path)
    assert marked == {("sampling", "test_a"): ("top-p-sampling", "temperature"), ("sampling", "test_b"): ()}


# --- --from-results ---------------------------------------------------------------------------------------------
def results_json(path: Path, tests: list[dict], student: str = "ben", with_concepts: bool = True) -> Path:
    if not with_concepts:
        tests = [{k: v for k, v in t.items() if k != "concepts"} for t in tests]
    data = {"max_score": 10, "submissions": [
        {"student": "ada", "score": 10, "max_score": 10, "exercises": []},
        {"student": student, "score": 3, "max_score": 10, "exercises": [
            {"exercise": "sampling", "file": "03_sampling.ipynb", "status": "graded", "score": 3, "max_score": 10,
             "message": "", "tests": tests}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


FAILED_TOP_P = {"name": TOP_P_TEST, "passed": False, "score": 0, "max_score": 1, "message": "kept too few",
                "concepts": ["top-p-sampling", "top-p-is-not-top-p-percent"]}
PASSED_TOP_K = {"name": "test_top_k_keeps_the_k_largest", "passed": True, "score": 1, "max_score": 1, "message": "",
                "concepts": ["top-k-sampling"]}


def _learn_everything(db: Path) -> None:
    """Every card introduced on Monday and rated Easy: straight to Review, none due for days."""
    with Store.open(db) as store:
        rv.sync(store, load_concepts())
        scheduler = rv.make_scheduler()
        for card in store.cards():
            rv.rate(store, scheduler, card, Rating.Easy, MONDAY_9AM)


@pytest.mark.parametrize("with_concepts", [True, False], ids=["concepts-in-results", "concepts-from-markers"])
def test_a_failed_top_p_test_makes_the_top_p_cards_due_today(tmp_path, with_concepts):
    db = tmp_path / "review.sqlite3"
    _learn_everything(db)
    tuesday = MONDAY_9AM + timedelta(days=1)
    with Store.open(db) as store:
        assert all(c.fsrs.state == State.Review and c.fsrs.due > tuesday + timedelta(days=1) for c in store.cards())
    results = results_json(tmp_path / "results.json", [FAILED_TOP_P, PASSED_TOP_K], with_concepts=with_concepts)
    run = CliRunner().invoke(cli.main, ["review", "--db", str(db), "--now", tuesday.isoformat(), "--lang", "en",
                                        "--from-results", str(results), "--student", "ben"], input="q\n")
    assert run.exit_code == 0, run.output
    expected = set(FAILED_TOP_P["concepts"] if with_concepts else
                   grades.marked_concepts()[("sampling", TOP_P_TEST)])
    assert "top-p-sampling" in expected
    assert "Brought forward" in run.output and "top-p-sampling" in run.output
    with Store.open(db) as store:
        due_today = {c.concept_id for c in store.cards() if c.fsrs.due < rv.day_start(tuesday) + timedelta(days=1)}
        s = rv.stats(store, tuesday)
    assert due_today == set(rv.keys_for(sorted(expected), load_concepts()))      # exactly those, reverse cards too
    assert "top-p-sampling~reverse" in due_today and "top-k-sampling" not in due_today
    assert s.due_today == len(due_today)
    first = {c.id: c for c in load_concepts()}[sorted(expected)[0]]
    assert "[...]" in run.output or first.term_en in run.output       # the session opens on one of them


def test_failed_tests_bring_new_cards_in_today_beyond_the_daily_limit(tmp_path):
    db = tmp_path / "review.sqlite3"
    results = results_json(tmp_path / "results.json", [FAILED_TOP_P])
    run = CliRunner().invoke(cli.main, ["review", "--db", str(db), "--now", MONDAY_9AM.isoformat(), "--lang", "en",
                                        "--new-per-day", "0", "--from-results", str(results), "--student", "ben"],
                             input="\n3\n" * 3 + "q\n")
    assert run.exit_code == 0, run.output
    with Store.open(db) as store:
        rated = [r.concept_id for r in store.reviews()]
    assert rated and set(rated) <= set(rv.keys_for(FAILED_TOP_P["concepts"], load_concepts())), rated


def test_an_exercise_that_did_not_run_points_to_all_its_concepts(tmp_path):
    data = json.loads(results_json(tmp_path / "r.json", []).read_text())
    data["submissions"][1]["exercises"][0].update(status="error", tests=[])
    failed = grades.failures(data, "ben")
    marked = {c for (ex, _), cs in grades.marked_concepts().items() if ex == "sampling" for c in cs}
    assert set(grades.concepts_of(failed)) == marked and "top-p-sampling" in marked


@pytest.mark.parametrize("args, expected", [
    (["--from-results", "{results}"], "--from-results and --student go together"),
    (["--from-results", "{results}", "--student", "zed"], "no student 'zed' in the results; they hold ada, ben"),
    (["--from-results", "{missing}", "--student", "ben"], "does not exist"),
    (["--from-results", "{garbage}", "--student", "ben"], "is not JSON"),
    (["--bring-forward", "top-p-sampling,nope"], "unknown concept id(s) nope"),
])
def test_bad_grades_input_is_a_one_line_error(tmp_path, args, expected):
    results = results_json(tmp_path / "results.json", [FAILED_TOP_P])
    (tmp_path / "garbage.json").write_text("{not json", encoding="utf-8")
    args = [a.format(results=results, missing=tmp_path / "nope.json", garbage=tmp_path / "garbage.json")
            for a in args]
    run = CliRunner().invoke(cli.main, ["review", "--db", str(tmp_path / "r.db"), *args], input="q\n")
    assert run.exit_code == 1 and expected in run.output, run.output
    assert len(run.output.strip().splitlines()) == 1 and "Traceback" not in run.output


def test_bring_forward_by_concept_id_makes_those_cards_due(tmp_path):
    db = tmp_path / "review.sqlite3"
    _learn_everything(db)
    tuesday = MONDAY_9AM + timedelta(days=1)
    run = CliRunner().invoke(cli.main, ["review", "--db", str(db), "--now", tuesday.isoformat(),
                                        "--bring-forward", "temperature"], input="q\n")
    assert run.exit_code == 0, run.output
    with Store.open(db) as store:
        assert {c.concept_id for c in store.cards() if c.fsrs.due <= tuesday} == {"temperature", "temperature~reverse"}


# --- the store's schema upgrade ---------------------------------------------------------------------------------
def test_a_first_edition_review_database_is_upgraded_in_place_with_its_history(tmp_path):
    """Schema 1 (no pulled_at, no parameters table), as the first edition wrote it."""
    db = tmp_path / "v1.sqlite3"
    con = sqlite3.connect(db)
    con.executescript("""
CREATE TABLE cards (card_id INTEGER PRIMARY KEY, concept_id TEXT NOT NULL UNIQUE, position INTEGER NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0, state INTEGER, step INTEGER, stability REAL, difficulty REAL, due TEXT,
    last_review TEXT);
CREATE TABLE reviews (review_id INTEGER PRIMARY KEY, card_id INTEGER NOT NULL REFERENCES cards(card_id),
    reviewed_at TEXT NOT NULL, rating INTEGER NOT NULL, duration_ms INTEGER, state_before INTEGER NOT NULL,
    state INTEGER NOT NULL, stability REAL NOT NULL, difficulty REAL NOT NULL, due TEXT NOT NULL, elapsed_days REAL,
    scheduled_days REAL NOT NULL);
INSERT INTO cards VALUES (1, 'temperature', 1, 0, 2, NULL, 3.2, 5.1, '2026-01-09T00:00:00.000000+00:00',
    '2026-01-05T00:00:00.000000+00:00');
INSERT INTO reviews VALUES (1, 1, '2026-01-05T00:00:00.000000+00:00', 3, 900, 0, 2, 3.2, 5.1,
    '2026-01-09T00:00:00.000000+00:00', NULL, 4.0);
PRAGMA user_version = 1;
""")
    con.close()
    with Store.open(db) as store:
        [card] = store.cards()
        assert card.concept_id == "temperature" and card.fsrs.stability == 3.2 and card.pulled_at is None
        assert len(store.reviews()) == 1 and store.parameters() is None
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    con.close()


# --- llmstudy check names the concepts --------------------------------------------------------------------------
BROKEN_TOP_P = '''

def top_p_filter(logits, p):
    """A classic bug: keeps only the most probable token, whatever p is."""
    import torch
    out = torch.full_like(logits, float("-inf"))
    idx = logits.argmax(dim=-1, keepdim=True)
    return out.scatter(-1, idx, logits.gather(-1, idx))
'''


def test_check_names_the_failed_tests_concepts_and_its_suggestion_brings_them_forward(tmp_path):
    from llmstudy.catalog import by_id
    work = tmp_path / "03_sampling.py"
    work.write_text(by_id("sampling").solution_path.read_text(encoding="utf-8") + BROKEN_TOP_P, encoding="utf-8")
    run = CliRunner().invoke(cli.main, ["check", str(work)])
    assert run.exit_code == 1, run.output
    lines = run.output.splitlines()
    [cards_line] = [line for line in lines if line.startswith("Cards to review:")]
    assert "top-p sampling" in cards_line and "(top-p-sampling)" in cards_line
    [command] = [line.split(": ", 1)[1] for line in lines if "llmstudy review --bring-forward" in line]
    assert '"Id:top-p-sampling"' in run.output                  # how to find the card in Anki

    db = tmp_path / "review.sqlite3"
    _learn_everything(db)
    tuesday = MONDAY_9AM + timedelta(days=1)
    args = command.split()[2:]                                    # after "llmstudy review"
    again = CliRunner().invoke(cli.main, ["review", "--db", str(db), "--now", tuesday.isoformat(), *args],
                               input="q\n")
    assert again.exit_code == 0, again.output
    with Store.open(db) as store:
        assert "top-p-sampling" in {c.concept_id for c in store.cards() if c.fsrs.due <= tuesday}


def test_passing_work_names_no_concepts(tmp_path):
    from llmstudy.catalog import by_id
    work = tmp_path / "03_sampling.py"
    work.write_text(by_id("sampling").solution_path.read_text(encoding="utf-8"), encoding="utf-8")
    run = CliRunner().invoke(cli.main, ["check", str(work)])
    assert run.exit_code == 0 and "Cards to review" not in run.output, run.output
