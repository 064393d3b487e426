"""Build the Anki deck (.apkg with genanki, or Anki's CSV) from the concepts in cards/concepts/.

Identity, so that re-importing updates instead of duplicating:
- note type, deck and note identities are fixed and namespaced: model and deck IDs are hashes of
  "llmstudy/week1/..." names, and a note's GUID is `genanki.guid_for(NAMESPACE, lang, kind, concept.id)`, so it
  depends on the concept id, never on its text;
- each `--lang` is its own variant (own root deck, note types and GUIDs): pick one, or import several side by side.

Modification times (why cards/concepts/revisions.json exists): Anki's importer updates an existing note only when the
incoming note is newer. genanki stamps every note with the build time, which would make every rebuild overwrite a
learner's own edits. Instead each concept's content hash is recorded in revisions.json with the time that
content was first exported; a build reuses that time while the hash matches and stamps a new, strictly later time
when it changes, then records it. The file is committed, so everyone's builds agree (the same data and the same
matplotlib give a byte-identical .apkg), and after editing concepts you commit the updated file with them.
Note types are stamped the same way, from a hash of their fields, templates and CSS.
"""
from __future__ import annotations

import csv
import functools
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

from cards.data import CardDataError, Concept
from cards.figures import media_name

NAMESPACE = "llmstudy/week1"
REVISIONS = "revisions.json"     # lives beside the concept files it stamps: cards/concepts/revisions.json
LANGS = ("ja", "en", "both")
ROOT_DECK = {"both": "LLM Week 1", "ja": "LLM Week 1 (日本語)", "en": "LLM Week 1 (English)"}
ROOT_DESCRIPTION = {
    "both": "Week 1 of 'Generative AI with Large Language Models', in Japanese and English. Built by llmstudy.",
    "ja": "「Generative AI with Large Language Models」第1週の概念カード。llmstudy で作成。",
    "en": "The concepts of week 1 of 'Generative AI with Large Language Models'. Built by llmstudy.",
}
ID_BASE = 1_700_000_000   # note and card ids count up from here (ms); Anki matches notes by GUID, not by id

CSS = """\
.card { font-family: "Helvetica Neue", Arial, sans-serif; font-size: 20px; line-height: 1.5;
        text-align: left; max-width: 42em; margin: 0 auto; color: black; background: white; }
.nightMode.card { color: #eee; background: #222; }
[lang="ja"] { font-family: "Hiragino Sans", "Hiragino Kaku Gothic ProN", "Noto Sans CJK JP", "Noto Sans JP",
              "Yu Gothic", Meiryo, sans-serif; }
.term { font-size: 28px; font-weight: bold; text-align: center; }
.term-other { text-align: center; color: #666; }
.explanation { margin-top: 0.6em; }
.figure img { max-width: 100%; }
.exercise { margin-top: 0.8em; font-size: 16px; color: #666; }
.cloze { font-weight: bold; color: #1565c0; }
"""

BASIC_FIELDS = ("Id", "Term_ja", "Term_en", "Explanation_ja", "Explanation_en", "Figure", "Exercise")
CLOZE_FIELDS = ("Id", "Text_ja", "Text_en", "Term_ja", "Term_en", "Figure")

_JA = '<div lang="ja" class="{cls}">{{{{{field}}}}}</div>'
_EN = '<div lang="en" class="{cls}">{{{{{field}}}}}</div>'
_FIGURE = '{{#Figure}}<div class="figure">{{Figure}}</div>{{/Figure}}'
EXERCISE_LABEL = {"ja": '<span lang="ja">演習</span>', "en": "Exercise",
                  "both": 'Exercise / <span lang="ja">演習</span>'}
_EXERCISE = {lang: f'{{{{#Exercise}}}}<div class="exercise">{label}: {{{{Exercise}}}}</div>{{{{/Exercise}}}}'
             for lang, label in EXERCISE_LABEL.items()}


def _basic_templates(lang: str) -> list[dict]:
    ja_term, en_term = _JA.format(cls="term", field="Term_ja"), _EN.format(cls="term", field="Term_en")
    ja_expl = _JA.format(cls="explanation", field="Explanation_ja")
    en_expl = _EN.format(cls="explanation", field="Explanation_en")
    if lang == "ja":
        front = ja_term
        back = f'{front}<div class="term-other">{{{{Term_en}}}}</div><hr id="answer">{ja_expl}'
    elif lang == "en":
        front = en_term
        back = f'{front}<hr id="answer">{en_expl}'
    else:
        front = ja_term + _EN.format(cls="term-other", field="Term_en")
        back = f'{front}<hr id="answer">{ja_expl}<hr>{en_expl}'
    name = {"ja": "用語 → 説明", "en": "Term → explanation", "both": "Term → explanation (ja + en)"}[lang]
    return [{"name": name, "qfmt": front, "afmt": back + _FIGURE + _EXERCISE[lang]}]


def _cloze_templates(lang: str) -> list[dict]:
    ja = '<div lang="ja">{{cloze:Text_ja}}</div>'
    en = '<div lang="en">{{cloze:Text_en}}</div>'
    front = {"ja": ja, "en": en, "both": f"{ja}<hr>{en}"}[lang]
    terms = {"ja": _JA.format(cls="term-other", field="Term_ja"), "en": _EN.format(cls="term-other", field="Term_en"),
             "both": _JA.format(cls="term-other", field="Term_ja") + _EN.format(cls="term-other", field="Term_en")}
    return [{"name": "Cloze", "qfmt": front, "afmt": f"{front}<hr id=\"answer\">{terms[lang]}{_FIGURE}"}]


def stable_id(*parts: str) -> int:
    """A fixed id in [2^30, 2^31) for a name under NAMESPACE, the range genanki recommends for model/deck ids."""
    digest = hashlib.sha256("/".join((NAMESPACE, *parts)).encode()).digest()
    return (1 << 30) + int.from_bytes(digest[:8], "big") % (1 << 30)


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


def note_fields(concept: Concept) -> tuple[list[str], list[str] | None]:
    """The field values of the concept's basic note (BASIC_FIELDS) and cloze note (CLOZE_FIELDS, or None)."""
    c = concept
    figure = f'<img src="{media_name(c.figure)}">' if c.figure else ""
    basic = [c.id, c.term_ja, c.term_en, c.explanation_ja, c.explanation_en, figure, exercise_label(c.exercise)]
    cloze = [c.id, c.cloze_ja, c.cloze_en, c.term_ja, c.term_en, figure] if c.cloze_ja else None
    return basic, cloze


def content_hash(concept: Concept) -> str:
    """A hash of what the concept's notes hold (fields and tags); its lecture position and source file are not
    content. Figures count by name: their PNG bytes vary with the matplotlib version."""
    content = {"fields": note_fields(concept), "tags": concept.tags}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def exercise_label(exercise_id: str | None) -> str:
    """'<code>exercises/03_sampling.ipynb</code> (Greedy, temperature, ...)', from the one list of exercises."""
    if exercise_id is None:
        return ""
    from llmstudy.exercises import by_id
    ex = by_id(exercise_id)
    return f"<code>exercises/{html.escape(ex.notebook)}</code> ({html.escape(ex.title)})"


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
    from cards import figures

    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    revisions = Revisions.load(revisions_path)
    t = now()

    basic_model, cloze_model = _models(lang)
    for model in (basic_model, cloze_model):
        model.mod = revisions.stamp(f"notetype:{model.name}", _model_hash(model), t)

    root = genanki.Deck(stable_id("deck", ROOT_DECK[lang]), ROOT_DECK[lang], description=ROOT_DESCRIPTION[lang])
    decks: dict[str, genanki.Deck] = {root.name: root}
    numbers = _section_numbers(concepts)
    n_notes = n_cards = 0
    for c in concepts:
        mod = revisions.stamp(c.id, content_hash(c), t)
        name = deck_name(lang, c, numbers[c.section])
        deck = decks.setdefault(name, genanki.Deck(stable_id("deck", name), name))
        basic_fields, cloze_fields = note_fields(c)
        # due = lecture position: Anki introduces new cards in due order.
        notes = [_note(mod, model=basic_model, fields=basic_fields, tags=list(c.tags),
                       guid=note_guid(lang, "basic", c.id), due=c.order)]
        if cloze_fields:
            notes.append(_note(mod, model=cloze_model, fields=cloze_fields, tags=list(c.tags),
                               guid=note_guid(lang, "cloze", c.id), due=c.order))
        for note in notes:
            deck.add_note(note)
            n_notes += 1
            n_cards += len(note.cards)
    revisions.prune(c.id for c in concepts)

    figure_names = sorted({c.figure for c in concepts if c.figure})
    with tempfile.TemporaryDirectory(prefix="llmstudy-cards-") as tmp:
        media = []
        for name in figure_names:
            media += figures.render_all([name], Path(tmp))
            if progress:
                progress(name)
        package = genanki.Package(list(decks.values()), media_files=[str(p) for p in media])
        staged = Path(tmp) / "deck.apkg"
        package.write_to_file(str(staged), timestamp=ID_BASE)
        _atomic_write(Path(out), _without_zip_times(staged))
    # Record the new times only once the deck is written: a failed build must not claim an export happened.
    saved = revisions.save()
    return BuildSummary(Path(out), "apkg", lang, len(concepts), n_notes, n_cards, list(decks),
                        [media_name(n) for n in figure_names], revisions.changed, saved, revisions.path)


def _models(lang: str):
    """The (basic, cloze) note types of the `lang` variant."""
    import genanki
    basic = _model(stable_id("model", "concept", lang), f"llmstudy concept ({lang})",
                   fields=[{"name": f} for f in BASIC_FIELDS], templates=_basic_templates(lang), css=CSS)
    cloze = _model(stable_id("model", "cloze", lang), f"llmstudy cloze ({lang})",
                   fields=[{"name": f} for f in CLOZE_FIELDS], templates=_cloze_templates(lang), css=CSS,
                   model_type=genanki.Model.CLOZE)
    return basic, cloze


def stale_revisions(concepts: list[Concept], revisions_path: Path) -> list[str]:
    """Concept ids and note types whose content no longer matches `revisions_path` (all --lang variants):
    what the next export would restamp. Empty when the committed file is up to date."""
    entries = Revisions.load(revisions_path).entries
    current = {c.id: content_hash(c) for c in concepts}
    for lang in LANGS:
        current |= {f"notetype:{m.name}": _model_hash(m) for m in _models(lang)}
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
    n_notes = 0
    for c in concepts:
        deck = deck_name(lang, c, numbers[c.section])
        if deck not in decks:
            decks.append(deck)
        tags = " ".join(c.tags)
        front = {"ja": _ja(c.term_ja), "en": c.term_en, "both": _ja(c.term_ja) + f"<div>{c.term_en}</div>"}[lang]
        exercise = exercise_label(c.exercise)
        back = {"ja": f"<div>{c.term_en}</div>" + _ja(c.explanation_ja),
                "en": f"<div>{c.explanation_en}</div>",
                "both": _ja(c.explanation_ja) + f"<hr><div>{c.explanation_en}</div>"}[lang]
        if exercise:
            back += f"<div>{EXERCISE_LABEL[lang]}: {exercise}</div>"
        writer.writerow([note_guid(lang, "basic", c.id), "Basic", deck, front, back, tags])
        n_notes += 1
        if c.cloze_ja:
            text = {"ja": _ja(c.cloze_ja), "en": c.cloze_en, "both": _ja(c.cloze_ja) + f"<hr><div>{c.cloze_en}</div>"}
            extra = {"ja": _ja(c.term_ja), "en": c.term_en, "both": _ja(c.term_ja) + f"<div>{c.term_en}</div>"}
            writer.writerow([note_guid(lang, "cloze", c.id), "Cloze", deck, text[lang], extra[lang], tags])
            n_notes += 1
    _atomic_write(Path(out), buffer.getvalue().encode("utf-8"))
    return BuildSummary(Path(out), "csv", lang, len(concepts), n_notes, n_notes, decks, [], [], True)


@functools.cache
def _stamped():
    """genanki's Model and Note, stamped with our modification time instead of the build time.
    (Made on first use: genanki is imported inside the build so that `llmstudy cards --help` stays fast.)"""
    import genanki

    class StampedModel(genanki.Model):
        mod = 0

        def to_json(self, timestamp, deck_id):
            return super().to_json(self.mod, deck_id)

    class StampedNote(genanki.Note):
        mod = 0

        def write_to_db(self, cursor, timestamp, deck_id, id_gen):
            super().write_to_db(cursor, self.mod, deck_id, id_gen)     # the note's and its cards' mod

    return StampedModel, StampedNote


def _model(model_id: int, name: str, **kwargs):
    return _stamped()[0](model_id, name, **kwargs)


def _note(mod: int, **kwargs):
    note = _stamped()[1](**kwargs)
    note.mod = mod
    return note


def _model_hash(model) -> str:
    content = {"fields": [f["name"] for f in model.fields], "templates": model.templates, "css": model.css,
               "type": model.model_type}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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


def _ja(text: str) -> str:
    return f'<div lang="ja">{text}</div>'


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
