"""Build the Anki deck (.apkg with genanki, or Anki's CSV) from the concepts in cards/concepts/.

Identity, so that re-importing updates instead of duplicating:
- note type, deck and note identities are fixed and namespaced: model and deck IDs are hashes of
  "llmstudy/week1/..." names, and a note's GUID is `genanki.guid_for(NAMESPACE, lang, kind, concept.id)`, so it
  depends on the concept id, never on its text;
- each `--lang` is its own variant (own root deck, note types and GUIDs): pick one, or import several side by side;
- a concept that was split keeps its id, and so its notes' GUIDs and review history, for the part closest to its old
  meaning; the other parts are new concepts (tests/test_cards_edition.py imports the second edition over the first);
- note types keep their fields and template names (their schema: cards/note_types.py), or Anki would not update them.

What a card shows: one language on the front (Japanese in the 'both' variant, the other language in a closed
<details> block), a context cue (lecture, and lifecycle stage where one applies), and on the back the exercise that
practises it and the week where the course goes deeper. Kinds of note per concept: basic (term -> explanation),
cloze (where the concept has one) and reverse (definition -> term, for about fifteen core terms).

Modification times (why cards/concepts/revisions.json exists): Anki's importer updates an existing note only when the
incoming note is newer. genanki stamps every note with the build time, which would make every rebuild overwrite a
learner's own edits. Instead each concept's content hash is recorded in revisions.json with the time that
content was first exported; a build reuses that time while the hash matches and stamps a new, strictly later time
when it changes, then records it. The file is committed, so everyone's builds agree (the same data, matplotlib and
the pinned figure font give a byte-identical .apkg), and after editing concepts you commit the updated file with them.
Note types are stamped the same way, from a hash of their fields, templates and CSS.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from llmstudy.cards.data import CardDataError, Concept, cue, deeper_note
from llmstudy.cards.figures import media_name
from llmstudy.cards.note_types import (NAMESPACE, ja_block, model_hash, note_types, other_language,
                                       primary_lang, stable_id, stamped_note)

REVISIONS = "revisions.json"     # lives beside the concept files it stamps: cards/concepts/revisions.json
LANGS = ("ja", "en", "both")
ROOT_DECK = {"both": "LLM Week 1", "ja": "LLM Week 1 (日本語)", "en": "LLM Week 1 (English)"}
ROOT_DESCRIPTION = {
    "both": "Week 1 of 'Generative AI with Large Language Models', in Japanese and English. Built by llmstudy.",
    "ja": "「Generative AI with Large Language Models」第1週の概念カード。llmstudy で作成。",
    "en": "The concepts of week 1 of 'Generative AI with Large Language Models'. Built by llmstudy.",
}
ID_BASE = 1_700_000_000   # note and card ids count up from here (ms); Anki matches notes by GUID, not by id


def note_guid(lang: str, kind: str, concept_id: str) -> str:
    """The note's GUID: from the concept id only, so editing the text updates the same note."""
    import genanki
    return genanki.guid_for(NAMESPACE, lang, kind, concept_id)


def deck_name(lang: str, concept: Concept, section_number: int) -> str:
    """'LLM Week 1::03 Transformer architecture · Transformer の構造'. The number keeps lecture order in Anki's
    alphabetical deck list."""
    title = {"ja": concept.section_title_ja, "en": concept.section_title_en,
             "both": f"{concept.section_title_en} · {concept.section_title_ja}"}[lang]
    return f"{ROOT_DECK[lang]}::{section_number:02d} {title}"


def note_fields(concept: Concept, lang: str) -> dict[str, list[str]]:
    """The field values of the concept's notes in the `lang` variant: {"basic": note_types.BASIC_FIELDS values, and
    "cloze": CLOZE_FIELDS, "reverse": REVERSE_FIELDS where the concept has them}."""
    c = concept
    one = primary_lang(lang)
    figure = f'<img src="{media_name(c.figure, one)}">' if c.figure else ""
    cue_line = cue(c, one)
    more = [x for x in (exercise_label(c.exercise, one), deeper_note(c, one)) if x]
    context = f'<div class="cue">{html.escape(cue_line)}</div>'
    if more:
        context += f'<div class="more exercise">{" · ".join(more)}</div>'
    fields = {"basic": [c.id, c.term_ja, c.term_en, c.explanation_ja, c.explanation_en, figure, context]}
    if c.cloze_ja:
        cue_div = {code: f'<div class="cue">{html.escape(cue(c, code))}</div>' for code in ("ja", "en")}
        fields["cloze"] = [c.id, cue_div["ja"] + c.cloze_ja, cue_div["en"] + c.cloze_en, c.term_ja, c.term_en,
                           figure]
    if c.reverse_ja:
        fields["reverse"] = [c.id, c.reverse_ja, c.reverse_en, c.term_ja, c.term_en, html.escape(cue_line)]
    return fields


def content_hash(concept: Concept) -> str:
    """A hash of what the concept's notes hold in every variant (fields and tags); its lecture position and source
    file are not content. Figures count by name: their PNG bytes vary with the matplotlib version."""
    content = {"fields": {lang: note_fields(concept, lang) for lang in LANGS}, "tags": concept.tags}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def exercise_label(exercise_id: str | None, lang: str = "en") -> str:
    """'Exercise 3: Greedy, temperature, top-k and top-p sampling' (or 演習 3：...), from the one list of exercises.
    Cards name the exercise, never a path in the repository."""
    if exercise_id is None:
        return ""
    from llmstudy.catalog import EXERCISES
    number, ex = next((i, e) for i, e in enumerate(EXERCISES, 1) if e.id == exercise_id)
    title = html.escape(ex.title)
    return f"演習 {number}：{title}" if lang == "ja" else f"Exercise {number}: {title}"


# --- modification times -----------------------------------------------------------------------------------------
@dataclass
class Revisions:
    """content hash -> first-export time, per concept id and per note type (see the module docstring)."""
    path: Path | None
    entries: dict[str, dict] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> Revisions:
        if path is None or not Path(path).exists():
            return cls(path)
        try:
            return cls(Path(path), json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise CardDataError(f"{Path(path).name}: not valid JSON ({err}); restore it from git") from None

    def stamp(self, key: str, digest: str, now: float) -> int:
        """The modification time for `key` with content `digest`: reused while the content is unchanged, otherwise
        a new time strictly after the old one (two edits within one second must still count as newer)."""
        entry = self.entries.get(key)
        if entry and entry["sha256"] == digest:
            return entry["mod"]
        mod = max(int(now), entry["mod"] + 1 if entry else 0)
        self.entries[key] = {"sha256": digest, "mod": mod}
        self.changed.append(key)
        return mod

    def prune(self, concept_ids: Iterable[str]) -> None:
        """Forget concepts that are gone (note types stay: other --lang variants use theirs)."""
        keep = set(concept_ids)
        for key in [k for k in self.entries if k not in keep and not k.startswith("notetype:")]:
            del self.entries[key]
            self.changed.append(key)

    def save(self) -> bool:
        """Write the file if anything changed; False when it could not be written (a read-only install)."""
        if not self.changed or self.path is None:
            return True
        text = json.dumps(dict(sorted(self.entries.items())), indent=1, ensure_ascii=False) + "\n"
        try:
            _atomic_write(self.path, text.encode("utf-8"))
        except OSError:
            return False
        return True


# --- building ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSummary:
    out: Path
    format: str
    lang: str
    concepts: int
    notes: int
    cards: int
    decks: list[str]
    media: list[str]
    restamped: list[str]          # revisions entries that got a new modification time
    revisions_saved: bool
    revisions: Path | None = None

    def lines(self) -> list[str]:
        size = self.out.stat().st_size / 1024
        what = f"{self.notes} notes, {self.cards} cards" if self.format == "apkg" else f"{self.notes} notes"
        lines = [f"Wrote {self.out} ({size:.0f} KiB): {self.concepts} concepts -> {what} "
                 f"in {len(self.decks) - 1} subdecks of '{self.decks[0]}', {len(self.media)} figures, lang={self.lang}."]
        if self.restamped:
            where = self.revisions if self.revisions_saved else f"{self.revisions} (NOT saved: read-only)"
            lines.append(f"{len(self.restamped)} concept(s) or note type(s) changed since the last export; "
                         f"their new modification times are in {where}: commit it with the concepts.")
        if self.format == "apkg":
            lines.append("Import it in Anki with File > Import; importing a newer export updates the same notes.")
        else:
            lines.append("CSV has no figures; import it with File > Import (uses Anki's stock Basic and Cloze types).")
        return lines


def _section_numbers(concepts: list[Concept]) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for c in concepts:
        numbers.setdefault(c.section, len(numbers) + 1)
    return numbers


def build_apkg(concepts: list[Concept], out: Path, lang: str = "both", revisions_path: Path | None = None,
               now: Callable[[], float] = time.time, progress: Callable[[str], None] | None = None) -> BuildSummary:
    """Write the deck for `lang` to `out` (atomically: a temp file renamed at the end) and return what it holds.

    revisions_path: the revisions file to read and update (the CLI uses concepts-folder/revisions.json); None stamps
    new content with `now()` and records nothing.
    progress: called with each figure's name once it is drawn.
    """
    import genanki
    from llmstudy.cards import figures

    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    revisions = Revisions.load(revisions_path)
    t = now()

    models = note_types(lang)
    for model in models.values():
        model.mod = revisions.stamp(f"notetype:{model.name}", model_hash(model), t)

    root = genanki.Deck(stable_id("deck", ROOT_DECK[lang]), ROOT_DECK[lang], description=ROOT_DESCRIPTION[lang])
    decks: dict[str, genanki.Deck] = {root.name: root}
    numbers = _section_numbers(concepts)
    n_notes = n_cards = 0
    for c in concepts:
        mod = revisions.stamp(c.id, content_hash(c), t)
        name = deck_name(lang, c, numbers[c.section])
        deck = decks.setdefault(name, genanki.Deck(stable_id("deck", name), name))
        for kind, fields in note_fields(c, lang).items():
            # due = lecture position: Anki introduces new cards in due order.
            note = stamped_note(mod, model=models[kind], fields=fields, tags=list(c.tags), guid=note_guid(lang, kind, c.id),
                         due=c.order)
            deck.add_note(note)
            n_notes += 1
            n_cards += len(note.cards)
    revisions.prune(c.id for c in concepts)

    one = primary_lang(lang)
    figure_names = sorted({c.figure for c in concepts if c.figure})
    with tempfile.TemporaryDirectory(prefix="llmstudy-cards-") as tmp:
        media = []
        for name in figure_names:
            media += figures.render_all([name], Path(tmp), one)
            if progress:
                progress(name)
        package = genanki.Package(list(decks.values()), media_files=[str(p) for p in media])
        staged = Path(tmp) / "deck.apkg"
        package.write_to_file(str(staged), timestamp=ID_BASE)
        _atomic_write(Path(out), _without_zip_times(staged))
    # Record the new times only once the deck is written: a failed build must not claim an export happened.
    saved = revisions.save()
    return BuildSummary(Path(out), "apkg", lang, len(concepts), n_notes, n_cards, list(decks),
                        [media_name(n, one) for n in figure_names], revisions.changed, saved, revisions.path)



def stale_revisions(concepts: list[Concept], revisions_path: Path) -> list[str]:
    """Concept ids and note types whose content no longer matches `revisions_path` (all --lang variants):
    what the next export would restamp. Empty when the committed file is up to date."""
    entries = Revisions.load(revisions_path).entries
    current = {c.id: content_hash(c) for c in concepts}
    for lang in LANGS:
        current |= {f"notetype:{m.name}": model_hash(m) for m in note_types(lang).values()}
    return sorted(key for key, digest in current.items() if entries.get(key, {}).get("sha256") != digest)


def build_csv(concepts: list[Concept], out: Path, lang: str = "both") -> BuildSummary:
    """Anki's CSV (notes in plain text, with header lines) for Anki's stock 'Basic' and 'Cloze' note types.
    Japanese text is wrapped in lang="ja" itself, since stock templates do not add it. No figures: CSV has no media."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    numbers = _section_numbers(concepts)
    buffer = io.StringIO()
    buffer.write("#separator:tab\n#html:true\n#guid column:1\n#notetype column:2\n#deck column:3\n#tags column:6\n")
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    decks = [ROOT_DECK[lang]]
    one = primary_lang(lang)
    n_notes = 0

    def text(c: Concept, name: str) -> str:
        """One language, with the other in a <details> block in 'both'."""
        main = getattr(c, f"{name}_{one}")
        main = ja_block(main) if one == "ja" else f"<div>{main}</div>"
        return main + (other_language("en", getattr(c, f"{name}_en")) if lang == "both" else "")

    for c in concepts:
        deck = deck_name(lang, c, numbers[c.section])
        if deck not in decks:
            decks.append(deck)
        tags = " ".join(c.tags)
        context = f"<div>{html.escape(cue(c, one))}</div>"
        more = " · ".join(x for x in (exercise_label(c.exercise, one), deeper_note(c, one)) if x)
        back = text(c, "explanation") + (f"<div>{more}</div>" if more else "")
        writer.writerow([note_guid(lang, "basic", c.id), "Basic", deck, context + text(c, "term"), back, tags])
        n_notes += 1
        if c.cloze_ja:
            writer.writerow([note_guid(lang, "cloze", c.id), "Cloze", deck, context + text(c, "cloze"),
                             text(c, "term"), tags])
            n_notes += 1
        if c.reverse_ja:
            writer.writerow([note_guid(lang, "reverse", c.id), "Basic", deck, context + text(c, "reverse"),
                             text(c, "term"), tags])
            n_notes += 1
    _atomic_write(Path(out), buffer.getvalue().encode("utf-8"))
    return BuildSummary(Path(out), "csv", lang, len(concepts), n_notes, n_notes, decks, [], [], True)



def _without_zip_times(path: Path) -> bytes:
    """The zip at `path` with every member dated 1980-01-01: genanki's members are byte-identical between builds of
    the same data, and this makes the .apkg itself identical too."""
    import zipfile
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), src.read(info),
                         compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()



def _atomic_write(path: Path, data: bytes) -> None:
    """Write next to `path`, then rename: readers never see half a file, and a failure leaves the old one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~umask)      # mkstemp makes 0600; give the file the mode open() would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
