"""`llmstudy review`: spaced repetition of the deck's concepts in the terminal, scheduled by FSRS.

One card per concept, keyed by the concept id (the same id the Anki deck uses for note GUIDs), and one more per
concept that has a reverse card (definition -> term), keyed `<id>~reverse`. A concept split in the second edition
kept its id for the part closest to its old meaning, so that card keeps its history. The scheduler is py-fsrs with
its default parameters until `llmstudy review --optimize` fits them to the learner's history (cards/optimize.py);
the desired retention is configurable. Interval fuzz is off: it spreads large collections' review peaks, but a
~90-card deck has none, and exact intervals keep every session reproducible.

Which card comes next, like Anki: learning cards that are due, then review cards due today, then new cards that a
failed graded test brought forward today (`--from-results`), then new cards in lecture order (at most
`new_per_day` first ratings per day), then learning cards due within LEARN_AHEAD. A day starts at DAY_STARTS_AT
local time, so a session past midnight still counts for the evening it began.

The clock is an argument (`now: Callable[[], datetime]`, timezone-aware) so tests run on a fixed one.
"""
from __future__ import annotations

import csv
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import click
from fsrs import Card, Rating, Scheduler, State
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llmstudy.cards.data import Concept
from llmstudy.cards.store import Store, StoredCard

LEARN_AHEAD = timedelta(minutes=20)   # Anki's default "learn ahead limit"
DAY_STARTS_AT = 4                      # local hour; Anki's default "next day starts at"
FORECAST_DAYS = 7
DEFAULT_NEW_PER_DAY = 10
DEFAULT_RETENTION = 0.9                # py-fsrs's default desired retention
RATING_KEYS = {"1": Rating.Again, "2": Rating.Hard, "3": Rating.Good, "4": Rating.Easy}
EXPORT_COLUMNS = ("card_id", "concept_id", "review_datetime", "rating", "review_duration", "state_before", "state",
                  "stability", "difficulty", "due", "elapsed_days", "scheduled_days")


def default_db_path() -> Path:
    import platformdirs
    return Path(platformdirs.user_data_dir("llmstudy")) / "review.sqlite3"


REVERSE = "~reverse"                   # suffix of a reverse card's key; '~' never occurs in a concept id


def make_scheduler(retention: float = DEFAULT_RETENTION, parameters: Sequence[float] | None = None) -> Scheduler:
    """FSRS with the given parameters (default: py-fsrs's) and default learning steps, the given desired retention,
    no fuzz (see module doc)."""
    if parameters is None:
        return Scheduler(desired_retention=retention, enable_fuzzing=False)
    return Scheduler(parameters=tuple(parameters), desired_retention=retention, enable_fuzzing=False)


def store_scheduler(store: Store, retention: float = DEFAULT_RETENTION) -> Scheduler:
    """The scheduler for this learner: the parameters --optimize stored, else the defaults."""
    fitted = store.parameters()
    return make_scheduler(retention, None if fitted is None else fitted[0])


@dataclass(frozen=True)
class Item:
    """One review card: a concept, asked term -> explanation (or its cloze), or definition -> term when reverse."""
    key: str
    concept: Concept
    reverse: bool = False


def items(concepts: Sequence[Concept]) -> list[tuple[Item, int]]:
    """Every review card of the deck with its position: a concept's reverse card comes right after it."""
    out = []
    for c in concepts:
        out.append((Item(c.id, c), 2 * c.order - 1))
        if c.reverse_en:
            out.append((Item(c.id + REVERSE, c, reverse=True), 2 * c.order))
    return out


def keys_for(concept_ids: Sequence[str], concepts: Sequence[Concept]) -> list[str]:
    """The review-card keys of these concepts (each with its reverse card, if any)."""
    wanted = set(concept_ids)
    return [item.key for item, _ in items(concepts) if item.concept.id in wanted]


def system_clock() -> datetime:
    """Now, in the local time zone (which decides where a day starts)."""
    return datetime.now().astimezone()


def fixed_clock(text: str) -> Callable[[], datetime]:
    """A clock stopped at `text`, an ISO 8601 time with its UTC offset (e.g. 2026-01-05T09:00:00+09:00)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset; write it like 2026-01-05T09:00:00+09:00")
    return lambda: moment


def day_start(now: datetime) -> datetime:
    """When the review day containing `now` began, in `now`'s time zone."""
    start = now.replace(hour=DAY_STARTS_AT, minute=0, second=0, microsecond=0)
    return start if now >= start else start - timedelta(days=1)


def sync(store: Store, concepts: Sequence[Concept]) -> dict[str, Item]:
    """Bring the store in line with the deck; returns the review cards by key."""
    pairs = items(concepts)
    store.sync([(item.key, position) for item, position in pairs])
    return {item.key: item for item, _ in pairs}


def _pulled_today(card: StoredCard, now: datetime) -> bool:
    return card.fsrs is None and card.pulled_at is not None and card.pulled_at >= day_start(now)


def new_left_today(store: Store, now: datetime, new_per_day: int) -> int:
    return max(0, new_per_day - store.first_reviews_since(day_start(now)))


def next_card(cards: Sequence[StoredCard], now: datetime, new_left: int) -> StoredCard | None:
    """The card to show now (see module doc for the order), or None when the session is done."""
    day_end = day_start(now) + timedelta(days=1)
    learning = sorted((c for c in cards if c.fsrs is not None and c.fsrs.state != State.Review),
                      key=lambda c: c.fsrs.due)
    if learning and learning[0].fsrs.due <= now:
        return learning[0]
    reviews = sorted((c for c in cards if c.fsrs is not None and c.fsrs.state == State.Review
                      and c.fsrs.due < day_end), key=lambda c: c.fsrs.due)
    if reviews:
        return reviews[0]
    pulled = [c for c in cards if _pulled_today(c, now)]
    if pulled:
        return pulled[0]
    new = [c for c in cards if c.fsrs is None]     # already in lecture order
    if new and new_left > 0:
        return new[0]
    if learning and learning[0].fsrs.due <= now + LEARN_AHEAD:
        return learning[0]
    return None


def due_now(store: Store, now: datetime, new_per_day: int) -> int:
    """How many cards the session would show now if each were rated once: due learning and review cards plus the new
    cards left for today."""
    cards = store.cards()
    day_end = day_start(now) + timedelta(days=1)
    due = sum(c.fsrs is not None and (c.fsrs.due <= now + LEARN_AHEAD if c.fsrs.state != State.Review
                                      else c.fsrs.due < day_end) for c in cards)
    pulled = sum(_pulled_today(c, now) for c in cards)
    new = sum(c.fsrs is None for c in cards) - pulled
    return due + pulled + min(new, new_left_today(store, now, new_per_day))


def _fsrs_card(store: Store, card: StoredCard, now: datetime) -> Card:
    return card.fsrs if card.fsrs is not None else Card(card_id=store.card_id(card.concept_id), due=now)


def rate(store: Store, scheduler: Scheduler, card: StoredCard, rating: Rating, now: datetime,
         duration_ms: int | None = None) -> Card:
    """Apply one rating with FSRS and save it (committed before this returns). Returns the card's new state."""
    after, _ = scheduler.review_card(_fsrs_card(store, card, now), rating,
                                     review_datetime=now.astimezone(timezone.utc))
    store.record(card.concept_id, card.fsrs, after, rating, now, duration_ms)
    return after


def preview(store: Store, scheduler: Scheduler, card: StoredCard, now: datetime) -> dict[Rating, timedelta]:
    """The interval each rating would give, without saving anything."""
    before = _fsrs_card(store, card, now)
    utc = now.astimezone(timezone.utc)
    return {rating: scheduler.review_card(before, rating, review_datetime=utc)[0].due - utc for rating in Rating}


# --- statistics --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    """A snapshot of the deck. new + learning + review = active cards; due_today + sum(due_by_day) + due_later =
    learning + review (every rated card is due exactly once)."""
    new: int                    # never rated
    learning: int               # FSRS Learning or Relearning
    review: int
    retired: int                # left the deck, history kept
    new_today: int              # new cards still to be introduced today
    due_today: int              # rated cards due before today ends, overdue included
    due_by_day: tuple[int, ...]  # due on each of the next FORECAST_DAYS days
    due_later: int
    reviews_today: int
    reviews_total: int
    retention: float | None     # share of recalls (not Again) among ratings of cards in Review state
    retention_reviews: int      # how many ratings that share is over


def stats(store: Store, now: datetime, new_per_day: int = DEFAULT_NEW_PER_DAY) -> Stats:
    cards = store.cards()
    rated = [c.fsrs for c in cards if c.fsrs is not None]
    states = Counter(card.state for card in rated)
    start = day_start(now)
    days = Counter((card.due - start) // timedelta(days=1) for card in rated)    # 0 = today, negative = overdue
    log = store.reviews()
    graduated = [r for r in log if r.state_before == State.Review]
    new = len(cards) - len(rated)
    return Stats(
        new=new, learning=states[State.Learning] + states[State.Relearning], review=states[State.Review],
        retired=len(store.cards(include_retired=True)) - len(cards),
        new_today=min(new, new_left_today(store, now, new_per_day)),
        due_today=sum(n for day, n in days.items() if day <= 0),
        due_by_day=tuple(days[day] for day in range(1, FORECAST_DAYS + 1)),
        due_later=sum(n for day, n in days.items() if day > FORECAST_DAYS),
        reviews_today=sum(r.reviewed_at >= start for r in log), reviews_total=len(log),
        retention=(sum(r.rating != Rating.Again for r in graduated) / len(graduated)) if graduated else None,
        retention_reviews=len(graduated),
    )


def show_stats(s: Stats, console: Console, retention_target: float) -> None:
    table = Table(title="Review statistics", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Cards", f"{s.new + s.learning + s.review} = {s.new} new + {s.learning} learning + "
                           f"{s.review} review" + (f"  ({s.retired} retired)" if s.retired else ""))
    table.add_row("Due today", f"{s.due_today} (+ {s.new_today} new)")
    table.add_row(f"Next {FORECAST_DAYS} days", "  ".join(f"+{d}: {n}" for d, n in enumerate(s.due_by_day, 1))
                  + f"  later: {s.due_later}")
    table.add_row("Reviews", f"{s.reviews_today} today, {s.reviews_total} in all")
    retention = "-" if s.retention is None else f"{s.retention:.0%}"
    table.add_row("Retention", f"{retention} of {s.retention_reviews} reviews of learnt cards "
                               f"(target {retention_target:.0%})")
    console.print(table)


# --- export ------------------------------------------------------------------------------------------------------

def export_log(store: Store, path: Path) -> int:
    """Write the review log as CSV, one row per rating; returns the number of rows.

    card_id, rating, review_datetime (ISO 8601, UTC) and review_duration (ms) are the fields of fsrs.ReviewLog, so
    rows load back for fsrs's Optimizer. States: 0 New, 1 Learning, 2 Review, 3 Relearning; days are fractional.
    """
    rows = store.reviews()
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(EXPORT_COLUMNS)
        for r in rows:
            writer.writerow([r.card_id, r.concept_id, r.reviewed_at.isoformat(), int(r.rating),
                             "" if r.duration_ms is None else r.duration_ms, r.state_before, int(r.state),
                             r.stability, r.difficulty, r.due.isoformat(),
                             "" if r.elapsed_days is None else round(r.elapsed_days, 6), round(r.scheduled_days, 6)])
    return len(rows)


# --- showing a card ----------------------------------------------------------------------------------------------

CLOZE = re.compile(r"\{\{c\d+::(.+?)(?:::(.+?))?\}\}", re.DOTALL)    # Anki cloze: {{c1::answer}} or {{c1::answer::hint}}


def cloze(text: str, reveal: bool) -> str:
    """Anki cloze markup as HTML: the hidden parts as [...] (or [hint]), or revealed in bold."""
    return CLOZE.sub(lambda m: f"<b>{m[1]}</b>" if reveal else f"<b>[{m[2] or '...'}]</b>", text)


class _ToText(HTMLParser):
    STYLES = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "code": "cyan",
              "sub": "dim", "sup": "dim"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text = Text()
        self.styles: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.STYLES:
            self.styles.append(self.STYLES[tag])
        elif tag == "br":
            self.text.append("\n")
        elif tag == "li":
            self.text.append("\n• ")
        elif tag in ("p", "div", "ul", "ol") and self.text.plain and not self.text.plain.endswith("\n"):
            self.text.append("\n")
        if tag == "sup":
            self.text.append("^")

    def handle_endtag(self, tag):
        if tag in self.STYLES and self.styles:
            self.styles.pop()
        elif tag in ("p", "div", "ul", "ol"):
            self.text.append("\n")

    def handle_data(self, data):
        # HTML collapses runs of white space (YAML folded lines arrive as single spaces already).
        self.text.append(re.sub(r"\s+", " ", data), style=" ".join(self.styles) or None)


def html_to_text(html: str) -> Text:
    """The simple HTML of the concept files as styled terminal text (tags dropped, entities decoded)."""
    parser = _ToText()
    parser.feed(html)
    parser.close()
    parser.text.rstrip()
    return parser.text


def _langs(lang: str) -> tuple[str, ...]:
    return ("ja", "en") if lang == "both" else (lang,)


def question(concept: Concept, lang: str, reverse: bool = False) -> Text:
    """The front: the context cue, then the cloze sentence with its blanks where the concept has one (else the term),
    or the definition of a reverse card. In "both", Japanese only: the English comes with the answer."""
    from llmstudy.cards.data import cue
    code = "ja" if lang == "both" else lang
    parts = [Text(cue(concept, code), style="dim")]
    sentence = getattr(concept, f"cloze_{code}")
    if reverse:
        parts.append(html_to_text(getattr(concept, f"reverse_{code}")))
    elif sentence:
        parts.append(html_to_text(cloze(sentence, reveal=False)))
    else:
        parts.append(html_to_text(f"<b>{getattr(concept, f'term_{code}')}</b>"))
    return Text("\n").join(parts)


def answer(concept: Concept, lang: str, reverse: bool = False) -> Text:
    """The back; in "both", the Japanese answer first, then the English one dimmed."""
    from llmstudy.cards.data import deeper_note
    from llmstudy.cards.deck import exercise_label
    parts = []
    for code in _langs(lang):
        block = html_to_text(f"<b>{getattr(concept, f'term_{code}')}</b>")
        if not reverse:
            block.append("\n")
            block.append_text(html_to_text(getattr(concept, f"explanation_{code}")))
            sentence = getattr(concept, f"cloze_{code}")
            if sentence:
                block.append("\n")
                block.append_text(html_to_text(cloze(sentence, reveal=True)))
        if code == "en" and lang == "both":
            block.stylize("dim")
        parts.append(block)
    code = "ja" if lang == "both" else lang
    more = [x for x in (exercise_label(concept.exercise, code), deeper_note(concept, code)) if x]
    if more:
        parts.append(Text(" · ".join(more), style="dim"))
    return Text("\n\n").join(parts)


def interval(delta: timedelta) -> str:
    """A short human interval: 1m, 10m, 3h, 8d, 1.5y."""
    minutes = delta.total_seconds() / 60
    if minutes < 60:
        return f"{max(1, round(minutes))}m"
    if minutes < 24 * 60:
        return f"{round(minutes / 60)}h"
    days = minutes / (24 * 60)
    return f"{round(days)}d" if days < 365 else f"{days / 365:.1f}y"


# --- the session -------------------------------------------------------------------------------------------------

def ask(prompt: str) -> str | None:
    """One line from the learner; None on Ctrl-C or end of input."""
    try:
        return click.prompt(prompt, default="", show_default=False, prompt_suffix=" ")
    except click.Abort:
        return None


@dataclass(frozen=True)
class SessionResult:
    ratings: tuple[Rating, ...]
    stopped: bool           # the learner quit (q, Ctrl-C, end of input) before the queue ran out


def run_session(store: Store, concepts: dict[str, Item], scheduler: Scheduler, now: Callable[[], datetime],
                console: Console, *, lang: str = "both", limit: int | None = None,
                new_per_day: int = DEFAULT_NEW_PER_DAY, read: Callable[[str], str | None] = ask) -> SessionResult:
    """Show due cards one at a time until none is left, `limit` ratings are given, or the learner quits.
    Every rating is saved as it is given; Ctrl-C anywhere (not only at a prompt) ends the session cleanly."""
    ratings: list[Rating] = []
    try:
        return _session_loop(store, concepts, scheduler, now, console, ratings, lang, limit, new_per_day, read)
    except KeyboardInterrupt:
        return SessionResult(tuple(ratings), stopped=True)


def _session_loop(store, concepts, scheduler, now, console, ratings: list[Rating], lang, limit, new_per_day,
                  read) -> SessionResult:
    while limit is None or len(ratings) < limit:
        moment = now()
        card = next_card(store.cards(), moment, new_left_today(store, moment, new_per_day))
        if card is None:
            return SessionResult(tuple(ratings), stopped=False)
        item = concepts[card.concept_id]
        concept = item.concept
        kind = "new" if card.fsrs is None else card.fsrs.state.name.lower()
        left = due_now(store, moment, new_per_day)
        shown_at = time.monotonic()
        console.print(Panel(question(concept, lang, item.reverse), title=f"{concept.section_title_en or concept.section}",
                            subtitle=f"{kind} · {left} left", title_align="left", subtitle_align="right"))
        reply = read("Enter: show the answer, q: quit")
        if reply is None or reply.strip().lower() == "q":
            return SessionResult(tuple(ratings), stopped=True)
        console.print(Panel(answer(concept, lang, item.reverse), border_style="green"))
        options = preview(store, scheduler, card, moment)
        console.print("   ".join(f"[bold]{int(r)}[/] {r.name} [dim]{interval(d)}[/]" for r, d in options.items()))
        rating = _read_rating(read, console)
        if rating is None:
            return SessionResult(tuple(ratings), stopped=True)
        rate(store, scheduler, card, rating, now(), duration_ms=round((time.monotonic() - shown_at) * 1000))
        ratings.append(rating)
    return SessionResult(tuple(ratings), stopped=False)


def _read_rating(read: Callable[[str], str | None], console: Console) -> Rating | None:
    while True:
        reply = read("Rate 1-4, q: quit")
        if reply is None or reply.strip().lower() == "q":
            return None
        if reply.strip() in RATING_KEYS:
            return RATING_KEYS[reply.strip()]
        console.print("Type 1 (Again), 2 (Hard), 3 (Good) or 4 (Easy), or q to quit.")


def summary(result: SessionResult, store: Store, now: datetime, new_per_day: int) -> str:
    """One or two lines for the end of a session."""
    counts = Counter(result.ratings)
    done = f" {len(result.ratings)} rated (" + ", ".join(f"{r.name} {counts[r]}" for r in Rating) + ")."
    if not result.ratings:
        done = " Nothing rated." if result.stopped else ""
    lead = "Stopped; every rating so far is saved." if result.stopped else \
        "Done." if result.ratings else "Nothing due now."
    s = stats(store, now, new_per_day)
    upcoming = [c.fsrs.due for c in store.cards() if c.fsrs is not None and c.fsrs.due > now]
    nxt = f" Next card due {min(upcoming).astimezone(now.tzinfo):%Y-%m-%d %H:%M}." if upcoming else ""
    return (f"{lead}{done} Still due today: {s.due_today} (+ {s.new_today} new); "
            f"due tomorrow: {s.due_by_day[0]}.{nxt}")
