"""The second edition imported over the first (tests/cards_first_edition/llm-week1.apkg, built by the first edition's
code from its concepts) in the real Anki (PyPI `anki`): notes update in place, nothing is duplicated, and the review
history of every kept card survives. Also the same in `llmstudy review`'s database."""
from __future__ import annotations

import json
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from llmstudy.cards.data import load_concepts
from llmstudy.cards.deck import build_apkg

FIRST_EDITION = Path(__file__).parent / "cards_first_edition" / "llm-week1.apkg"
T1 = 1_900_000_000.0        # after every first-edition stamp (the committed revisions file's times are earlier)


def _collection(directory: Path):
    from anki.collection import Collection
    directory.mkdir(parents=True, exist_ok=True)
    return Collection(str(directory / "collection.anki2"))


def _import(col, path: Path):
    """Anki's default import options: in particular 'Merge note types' is off."""
    from anki.collection import ImportAnkiPackageOptions, ImportAnkiPackageRequest
    return col.import_anki_package(ImportAnkiPackageRequest(package_path=str(path),
                                                            options=ImportAnkiPackageOptions())).log


def _first_edition_ids() -> set[str]:
    """The concept ids in the first edition's notes (the apkg's own collection, read with Anki)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        col = _collection(Path(tmp))
        _import(col, FIRST_EDITION)
        ids = {col.get_note(n)["Id"] for n in col.find_notes("")}
        col.close()
    return ids


@pytest.fixture(scope="module")
def second_edition(tmp_path_factory):
    d = tmp_path_factory.mktemp("second")
    summary = build_apkg(load_concepts(), d / "deck.apkg", "both", revisions_path=d / "revisions.json",
                         now=lambda: T1)
    return d / "deck.apkg", summary


def _study(col, card_ids, answers=(3, 3, 3)) -> None:
    """Answer each card a few times through Anki's own scheduler, so it has reviews in its log."""
    for cid in card_ids:
        for ease in answers:
            card = col.get_card(cid)
            card.start_timer()
            col.sched.answerCard(card, ease)


def test_every_first_edition_concept_is_kept_so_split_concepts_keep_their_guid():
    """A split keeps the old id (and so its GUID) for the part closest to the old meaning; nothing was renamed."""
    now = {c.id for c in load_concepts()}
    assert _first_edition_ids() <= now


def test_reimport_over_the_first_edition_updates_notes_and_keeps_review_history(second_edition, tmp_path):
    path, summary = second_edition
    col = _collection(tmp_path)
    first_log = _import(col, FIRST_EDITION)
    old_notes = col.note_count()
    assert len(first_log.new) == old_notes > 50

    studied = list(col.find_cards('"Id:top-k-and-top-p-together" or "Id:self-attention" or "Id:llm-use-cases"'))
    assert len(studied) >= 4
    _study(col, studied)
    before = {cid: (col.get_card(cid).reps, col.get_card(cid).ivl, col.get_card(cid).nid) for cid in studied}
    revlog_before = col.db.scalar("select count() from revlog")
    assert revlog_before == 3 * len(studied)

    log = _import(col, path)
    assert len(log.conflicting) == 0, "a note type's schema changed: Anki would refuse to update those notes"
    assert len(log.updated) == old_notes                  # every first-edition note updated in place
    assert col.note_count() == summary.notes               # new concepts and reverse cards added, no duplicates
    assert col.note_count() == old_notes + len(log.new)
    assert col.db.scalar("select count() from revlog") == revlog_before
    for cid, (reps, ivl, nid) in before.items():
        card = col.get_card(cid)
        assert (card.reps, card.ivl, card.nid) == (reps, ivl, nid), cid
    [note] = [col.get_note(n) for n in col.find_notes('"Id:self-attention" note:"llmstudy concept (both)"')]
    assert "not learned parameters" in note["Explanation_en"]       # the second edition's text
    col.close()


def test_the_review_history_of_kept_concepts_survives_in_llmstudy_review(tmp_path):
    """A learner's review database from the first edition, synced to the second: kept concepts keep their cards and
    their log, split-off parts arrive as new cards, reverse cards are cards of their own."""
    from llmstudy.cards import review as rv
    from llmstudy.cards.store import Store
    from fsrs import Rating

    old_ids = sorted(_first_edition_ids())
    when = datetime(2026, 1, 5, 9, 0, tzinfo=timezone(timedelta(hours=9)))
    db = tmp_path / "review.sqlite3"
    with Store.open(db) as store:
        store.sync([(cid, n) for n, cid in enumerate(old_ids, 1)])
        scheduler = rv.make_scheduler()
        for card in store.cards()[:5]:
            rv.rate(store, scheduler, card, Rating.Good, when)
        kept = {c.concept_id: c.fsrs for c in store.cards() if c.fsrs is not None}
    with Store.open(db) as store:
        items = rv.sync(store, load_concepts())
        cards = {c.concept_id: c for c in store.cards()}
        assert {cid: cards[cid].fsrs for cid in kept} == kept
        assert len(store.reviews()) == 5 and not store.cards(include_retired=True)[0].retired
        assert set(items) == set(cards) and len(cards) > len(old_ids)
        assert "self-attention~reverse" in cards and cards["self-attention~reverse"].fsrs is None


def test_first_edition_fixture_is_the_first_edition():
    """Guards the fixture: 54 concepts, figures without a language suffix (the first edition's media names)."""
    with zipfile.ZipFile(FIRST_EDITION) as z:
        media = sorted(json.loads(z.read("media")).values())
    assert media == sorted(f"llmstudy-w1-{n}.png" for n in ("softmax-temperature", "top-k-top-p",
                                                           "positional-encoding", "project-lifecycle",
                                                           "model-families"))
    assert len(_first_edition_ids()) == 54
