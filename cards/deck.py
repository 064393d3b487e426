"""Build the Anki deck (.apkg with genanki, or Anki's CSV) from the concepts in cards/concepts/.

Identity, so that re-importing updates instead of duplicating:
- note type, deck and note identities are fixed and namespaced: model and deck IDs are hashes of
  "llmstudy/week1/..." names, and a note's GUID is `genanki.guid_for(NAMESPACE, lang, kind, concept.id)`, so it
  depends on the concept id, never on its text;
- each `--lang` is its own variant (own root deck, note types and GUIDs): pick one, or import several side by side;
- a concept that was split keeps its id, and so its notes' GUIDs and review history, for the part closest to its old
  meaning; the other parts are new concepts (tests/test_cards_edition.py imports the second edition over the first);
- note types keep their fields and template names (their schema, see BASIC_FIELDS), or Anki would not update them.

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

from llmstudy.cards.data import CardDataError, Concept, cue, deeper_note
from llmstudy.cards.figures import media_name

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

# Colours are chosen for contrast (WCAG 2 AA, at least 4.5:1 against the card's background, day and night);
# tests/test_cards.py computes every ratio from this CSS.
CSS = """\
.card { font-family: "Helvetica Neue", Arial, sans-serif; font-size: 20px; line-height: 1.5;
        text-align: left; max-width: 42em; margin: 0 auto; color: #000000; background: #ffffff; }
.nightMode.card { color: #eeeeee; background: #222222; }
[lang="ja"] { font-family: "Hiragino Sans", "Hiragino Kaku Gothic ProN", "Noto Sans CJK JP", "Noto Sans JP",
              "Yu Gothic", Meiryo, sans-serif; }
.term { font-size: 28px; font-weight: bold; text-align: center; }
.term-other { text-align: center; color: #595959; }
.nightMode .term-other { color: #b3b3b3; }
.explanation { margin-top: 0.6em; }
.figure img { max-width: 100%; }
.cue { font-size: 16px; text-align: center; color: #595959; margin-bottom: 0.6em; }
.nightMode .cue { color: #b3b3b3; }
.exercise { margin-top: 0.8em; font-size: 16px; color: #595959; }
.nightMode .exercise { color: #b3b3b3; }
.front-context .more, .back-context .cue { display: none; }
.cloze { font-weight: bold; color: #1565c0; }
.nightMode .cloze { color: #90caf9; }
details { margin-top: 0.6em; font-size: 18px; }
summary { color: #595959; cursor: pointer; }
.nightMode summary { color: #b3b3b3; }
"""

# Field lists and template names are the note types' schema: Anki updates a note on re-import only when the
# incoming note type has the same schema as the one in the collection (otherwise the note "conflicts" and stays
# old, unless the learner ticks "Merge note types"). So the first edition's fields stay as they were: the basic
# note's "Exercise" field now holds the whole context line (cue, exercise, deeper week), and the cloze texts
# start with their cue. Reverse cards are a note type of their own, new in the second edition.
BASIC_FIELDS = ("Id", "Term_ja", "Term_en", "Explanation_ja", "Explanation_en", "Figure", "Exercise")
CLOZE_FIELDS = ("Id", "Text_ja", "Text_en", "Term_ja", "Term_en", "Figure")
REVERSE_FIELDS = ("Id", "Definition_ja", "Definition_en", "Term_ja", "Term_en", "Context")
OTHER = {"ja": "en", "en": "ja"}
SUMMARY = {"en": "English", "ja": '<span lang="ja">日本語</span>'}


def _field(lang: str, field: str, cls: str, kind: str = "") -> str:
    return f'<div lang="{lang}" class="{cls}">{{{{{kind}{field}}}}}</div>'


def _details(lang: str, inner: str) -> str:
    """The other language, on demand: a closed <details> block (Anki's webview and AnkiDroid support it)."""
    return f'<details lang="{lang}"><summary>{SUMMARY[lang]}</summary>{inner}</details>'


def _primary(lang: str) -> str:
    return "ja" if lang == "both" else lang


_FIGURE = '{{#Figure}}<div class="figure">{{Figure}}</div>{{/Figure}}'
_FRONT_CONTEXT = '{{#Exercise}}<div class="front-context">{{Exercise}}</div>{{/Exercise}}'
_BACK_CONTEXT = '{{#Exercise}}<div class="back-context">{{Exercise}}</div>{{/Exercise}}'


def _basic_templates(lang: str) -> list[dict]:
    """One language on the front; in 'both', the other language only in a closed <details> block."""
    one = _primary(lang)
    front = _FRONT_CONTEXT + _field(one, f"Term_{one}", "term")
    back_text = _field(one, f"Explanation_{one}", "explanation")
    if lang == "both":
        front += _details("en", _field("en", "Term_en", "term-other"))
        back_text += _details("en", _field("en", "Explanation_en", "explanation"))
    name = {"ja": "用語 → 説明", "en": "Term → explanation", "both": "Term → explanation (ja + en)"}[lang]
    return [{"name": name, "qfmt": front,
             "afmt": f'{front}<hr id="answer">{back_text}{_FIGURE}{_BACK_CONTEXT}'}]


def _cloze_templates(lang: str) -> list[dict]:
    one = _primary(lang)
    front = f'<div lang="{one}">{{{{cloze:Text_{one}}}}}</div>'
    terms = _field(one, f"Term_{one}", "term-other")
    if lang == "both":
        front += _details("en", '<div lang="en">{{cloze:Text_en}}</div>')
        terms += _details("en", _field("en", "Term_en", "term-other"))
    return [{"name": "Cloze", "qfmt": front, "afmt": f'{front}<hr id="answer">{terms}{_FIGURE}'}]


def _reverse_templates(lang: str) -> list[dict]:
    """Definition -> term. The context line is the front's cue only (it never names the term)."""
    one = _primary(lang)
    front = '<div class="cue">{{Context}}</div>' + _field(one, f"Definition_{one}", "explanation")
    answer = _field(one, f"Term_{one}", "term")
    if lang == "both":
        front += _details("en", _field("en", "Definition_en", "explanation"))
        answer += _details("en", _field("en", "Term_en", "term-other"))
    name = {"ja": "説明 → 用語", "en": "Definition → term", "both": "Definition → term (ja + en)"}[lang]
    return [{"name": name, "qfmt": front, "afmt": f'{front}<hr id="answer">{answer}'}]


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


def note_fields(concept: Concept, lang: str) -> dict[str, list[str]]:
    """The field values of the concept's notes in the `lang` variant: {"basic": BASIC_FIELDS values, and
    "cloze": CLOZE_FIELDS, "reverse": REVERSE_FIELDS where the concept has them}."""
    c = concept
    one = _primary(lang)
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

    models = _models(lang)
    for model in models.values():
        model.mod = revisions.stamp(f"notetype:{model.name}", _model_hash(model), t)

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
            note = _note(mod, model=models[kind], fields=fields, tags=list(c.tags), guid=note_guid(lang, kind, c.id),
                         due=c.order)
            deck.add_note(note)
            n_notes += 1
            n_cards += len(note.cards)
    revisions.prune(c.id for c in concepts)

    one = _primary(lang)
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


def _models(lang: str) -> dict:
    """The note types of the `lang` variant, by note kind: basic, cloze and reverse."""
    import genanki
    basic = _model(stable_id("model", "concept", lang), f"llmstudy concept ({lang})",
                   fields=[{"name": f} for f in BASIC_FIELDS], templates=_basic_templates(lang), css=CSS)
    cloze = _model(stable_id("model", "cloze", lang), f"llmstudy cloze ({lang})",
                   fields=[{"name": f} for f in CLOZE_FIELDS], templates=_cloze_templates(lang), css=CSS,
                   model_type=genanki.Model.CLOZE)
    reverse = _model(stable_id("model", "reverse", lang), f"llmstudy reverse ({lang})",
                     fields=[{"name": f} for f in REVERSE_FIELDS], templates=_reverse_templates(lang), css=CSS)
    return {"basic": basic, "cloze": cloze, "reverse": reverse}


def stale_revisions(concepts: list[Concept], revisions_path: Path) -> list[str]:
    """Concept ids and note types whose content no longer matches `revisions_path` (all --lang variants):
    what the next export would restamp. Empty when the committed file is up to date."""
    entries = Revisions.load(revisions_path).entries
    current = {c.id: content_hash(c) for c in concepts}
    for lang in LANGS:
        current |= {f"notetype:{m.name}": _model_hash(m) for m in _models(lang).values()}
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
    one = _primary(lang)
    n_notes = 0

    def text(c: Concept, name: str) -> str:
        """One language, with the other in a <details> block in 'both'."""
        main = getattr(c, f"{name}_{one}")
        main = _ja(main) if one == "ja" else f"<div>{main}</div>"
        return main + (_details("en", getattr(c, f"{name}_en")) if lang == "both" else "")

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
