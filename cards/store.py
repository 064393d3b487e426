"""The review database: FSRS card state per concept and the log of every rating, in one SQLite file.

Two tables. `cards` holds one row per concept id ever seen, with its FSRS state (`state` NULL = new, never rated);
a concept that leaves the deck is marked `retired`, never deleted, so its history survives and comes back with it.
`reviews` holds one row per rating, with the card's state before and after it, which is what FSRS optimisation needs.
`parameters` holds at most one row: the FSRS parameters `llmstudy review --optimize` fitted to this history.
A card's `pulled_at` is set when a failed graded test brought it forward (`--from-results`): a new card pulled that
day is introduced regardless of the daily limit.

Every rating is written in its own transaction (`record`), so Ctrl-C between two cards loses nothing already rated.
Times are stored as ISO 8601 text in UTC. The schema version lives in `PRAGMA user_version`.
Standard library only, so `llmstudy review` starts fast.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fsrs import Card, Rating, State

SCHEMA_VERSION = 2          # 2: cards.pulled_at and the parameters table (a version-1 file is upgraded in place)
NEW = 0     # `state_before` of a card's first rating; FSRS's own states are 1 Learning, 2 Review, 3 Relearning

_SCHEMA = """
CREATE TABLE cards (
    card_id     INTEGER PRIMARY KEY,        -- FSRS card id, stable per concept
    concept_id  TEXT NOT NULL UNIQUE,
    position    INTEGER NOT NULL,           -- lecture order: new cards are introduced by it
    retired     INTEGER NOT NULL DEFAULT 0, -- 1 = no longer in the deck; history kept
    state       INTEGER,                    -- fsrs.State; NULL = new
    step        INTEGER,
    stability   REAL,
    difficulty  REAL,
    due         TEXT,
    last_review TEXT,
    pulled_at   TEXT                        -- when grades last brought it forward; NULL = never
);
CREATE TABLE reviews (
    review_id      INTEGER PRIMARY KEY,
    card_id        INTEGER NOT NULL REFERENCES cards(card_id),
    reviewed_at    TEXT NOT NULL,
    rating         INTEGER NOT NULL,        -- fsrs.Rating: 1 Again, 2 Hard, 3 Good, 4 Easy
    duration_ms    INTEGER,                 -- question shown -> rating given
    state_before   INTEGER NOT NULL,        -- 0 New, else fsrs.State
    state          INTEGER NOT NULL,        -- after the rating
    stability      REAL NOT NULL,
    difficulty     REAL NOT NULL,
    due            TEXT NOT NULL,
    elapsed_days   REAL,                    -- since this card's previous rating; NULL for the first
    scheduled_days REAL NOT NULL            -- due - reviewed_at
);
CREATE INDEX reviews_by_card ON reviews (card_id, reviewed_at);
""" + """
CREATE TABLE parameters (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    parameters  TEXT NOT NULL,              -- JSON list of the FSRS parameters
    fitted_at   TEXT NOT NULL,
    reviews     INTEGER NOT NULL            -- how many reviews they were fitted on
);
"""
_UPGRADE_1_TO_2 = """
ALTER TABLE cards ADD COLUMN pulled_at TEXT;
CREATE TABLE parameters (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    parameters  TEXT NOT NULL,
    fitted_at   TEXT NOT NULL,
    reviews     INTEGER NOT NULL
);
PRAGMA user_version = 2;
"""


class StoreError(Exception):
    """The database file can't be used (corrupt, not ours, or from a newer llmstudy); the message says what to do."""


@dataclass(frozen=True)
class StoredCard:
    concept_id: str
    position: int
    retired: bool
    fsrs: Card | None       # None while the card is new
    pulled_at: datetime | None = None   # when grades brought it forward


@dataclass(frozen=True)
class LoggedReview:
    card_id: int
    concept_id: str
    reviewed_at: datetime
    rating: Rating
    duration_ms: int | None
    state_before: int
    state: State
    stability: float
    difficulty: float
    due: datetime
    elapsed_days: float | None
    scheduled_days: float


def _iso(t: datetime) -> str:
    # One fixed format, so that text order is time order inside SQL.
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class Store:
    """An open review database. Use `Store.open(path)`; close it (or use `with`) when done."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open `path`, creating it (and its folder) when missing. Raises StoreError for a file we can't use."""
        path = Path(path)
        hint = "move it away, or pass another file with --db"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"can't open review database {path}: {err}") from None
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer llmstudy (schema {version}; this one reads up to "
                                 f"{SCHEMA_VERSION}); upgrade llmstudy, or pass another file with --db")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise StoreError(f"{path} is damaged (SQLite quick_check failed); {hint}")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                with db:
                    db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            elif not {"cards", "reviews"} <= tables:
                raise StoreError(f"{path} is an SQLite file but not an llmstudy review database; {hint}")
            elif version == 1:
                with db:
                    db.executescript("BEGIN;" + _UPGRADE_1_TO_2 + "COMMIT;")
        except sqlite3.DatabaseError as err:
            db.close()
            raise StoreError(f"{path} is not a readable review database ({err}); {hint}") from None
        except StoreError:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sync(self, concepts: list[tuple[str, int]]) -> None:
        """Match the stored cards to the deck: `concepts` is (concept id, lecture position) for every concept now in
        it. New ids become new cards; ids no longer there are marked retired (and unretired if they come back)."""
        current = dict(concepts)
        with self._db:
            known = {cid for (cid,) in self._db.execute("SELECT concept_id FROM cards")}
            self._db.executemany("INSERT INTO cards (concept_id, position) VALUES (?, ?)",
                                 [(cid, pos) for cid, pos in concepts if cid not in known])
            self._db.executemany("UPDATE cards SET position = ?, retired = 0 WHERE concept_id = ?",
                                 [(pos, cid) for cid, pos in concepts if cid in known])
            self._db.executemany("UPDATE cards SET retired = 1 WHERE concept_id = ?",
                                 [(cid,) for cid in known if cid not in current])

    def cards(self, include_retired: bool = False) -> list[StoredCard]:
        """Stored cards in lecture order."""
        where = "" if include_retired else "WHERE retired = 0"
        rows = self._db.execute(f"SELECT card_id, concept_id, position, retired, state, step, stability, difficulty, "
                                f"due, last_review, pulled_at FROM cards {where} ORDER BY position, concept_id")
        return [StoredCard(concept_id, position, bool(retired), None if state is None else Card(
                    card_id=card_id, state=State(state), step=step, stability=stability, difficulty=difficulty,
                    due=_time(due), last_review=_time(last_review)), _time(pulled))
                for card_id, concept_id, position, retired, state, step, stability, difficulty, due, last_review,
                pulled in rows]

    def card_id(self, concept_id: str) -> int:
        row = self._db.execute("SELECT card_id FROM cards WHERE concept_id = ?", (concept_id,)).fetchone()
        if row is None:
            raise KeyError(concept_id)
        return row[0]

    def record(self, concept_id: str, before: Card | None, after: Card, rating: Rating, reviewed_at: datetime,
               duration_ms: int | None = None) -> None:
        """Save one rating: the card's new state and its log line, in one transaction, committed before returning."""
        elapsed = None if before is None or before.last_review is None else \
            (reviewed_at - before.last_review).total_seconds() / 86400
        scheduled = (after.due - reviewed_at).total_seconds() / 86400
        with self._db:
            card_id = self.card_id(concept_id)
            self._db.execute("UPDATE cards SET state = ?, step = ?, stability = ?, difficulty = ?, due = ?, "
                             "last_review = ? WHERE card_id = ?",
                             (int(after.state), after.step, after.stability, after.difficulty, _iso(after.due),
                              _iso(after.last_review), card_id))
            self._db.execute("INSERT INTO reviews (card_id, reviewed_at, rating, duration_ms, state_before, state, "
                             "stability, difficulty, due, elapsed_days, scheduled_days) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (card_id, _iso(reviewed_at), int(rating), duration_ms,
                              NEW if before is None else int(before.state), int(after.state), after.stability,
                              after.difficulty, _iso(after.due), elapsed, scheduled))

    def reviews(self) -> list[LoggedReview]:
        """The whole review log, oldest first."""
        rows = self._db.execute(
            "SELECT r.card_id, c.concept_id, r.reviewed_at, r.rating, r.duration_ms, r.state_before, r.state, "
            "r.stability, r.difficulty, r.due, r.elapsed_days, r.scheduled_days "
            "FROM reviews r JOIN cards c USING (card_id) ORDER BY r.reviewed_at, r.review_id")
        return [LoggedReview(card_id, concept_id, _time(at), Rating(rating), duration, before, State(state),
                             stability, difficulty, _time(due), elapsed, scheduled)
                for card_id, concept_id, at, rating, duration, before, state, stability, difficulty, due, elapsed,
                scheduled in rows]

    def first_reviews_since(self, start: datetime) -> int:
        """How many cards had their very first rating at or after `start` (new cards introduced since then)."""
        return self._db.execute("SELECT COUNT(*) FROM (SELECT MIN(reviewed_at) AS first FROM reviews "
                                "GROUP BY card_id) WHERE first >= ?", (_iso(start),)).fetchone()[0]

    def bring_forward(self, concept_ids: list[str], now: datetime) -> list[str]:
        """Make these cards due now: a rated card's due time moves to `now` (never later than it was), a new card is
        marked pulled so that today's session introduces it. Returns the ids that exist and are active."""
        moved = []
        with self._db:
            for cid in concept_ids:
                row = self._db.execute("SELECT due FROM cards WHERE concept_id = ? AND retired = 0", (cid,)).fetchone()
                if row is None:
                    continue
                if row[0] is not None and row[0] > _iso(now):
                    self._db.execute("UPDATE cards SET due = ? WHERE concept_id = ?", (_iso(now), cid))
                self._db.execute("UPDATE cards SET pulled_at = ? WHERE concept_id = ?", (_iso(now), cid))
                moved.append(cid)
        return moved

    def parameters(self) -> tuple[list[float], datetime, int] | None:
        """The fitted FSRS parameters, when they were fitted and on how many reviews; None = use the defaults."""
        import json
        row = self._db.execute("SELECT parameters, fitted_at, reviews FROM parameters WHERE id = 1").fetchone()
        return None if row is None else (json.loads(row[0]), _time(row[1]), row[2])

    def set_parameters(self, parameters: list[float], fitted_at: datetime, reviews: int) -> None:
        import json
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO parameters (id, parameters, fitted_at, reviews) "
                             "VALUES (1, ?, ?, ?)", (json.dumps(list(parameters)), _iso(fitted_at), reviews))
