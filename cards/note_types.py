"""The note types of the deck: their fields (the schema Anki matches on re-import), card templates and CSS.

What a card looks like lives here; what the deck holds (notes, decks, identity, modification times) is
cards/deck.py. Note types are genanki Models stamped with a modification time of our own (see deck.py's docstring).
"""
from __future__ import annotations

import functools
import hashlib
import json

NAMESPACE = "llmstudy/week1"


def stable_id(*parts: str) -> int:
    """A fixed id in [2^30, 2^31) for a name under NAMESPACE, the range genanki recommends for model/deck ids."""
    digest = hashlib.sha256("/".join((NAMESPACE, *parts)).encode()).digest()
    return (1 << 30) + int.from_bytes(digest[:8], "big") % (1 << 30)


# Colours are chosen for contrast (WCAG 2 AA, at least 4.5:1 against the card's background, day and night);
# tests/test_cards_content.py computes every ratio from this CSS.
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
SUMMARY = {"en": "English", "ja": '<span lang="ja">日本語</span>'}


def _field(lang: str, field: str, cls: str, kind: str = "") -> str:
    return f'<div lang="{lang}" class="{cls}">{{{{{kind}{field}}}}}</div>'


def other_language(lang: str, inner: str) -> str:
    """The other language, on demand: a closed <details> block (Anki's webview and AnkiDroid support it)."""
    return f'<details lang="{lang}"><summary>{SUMMARY[lang]}</summary>{inner}</details>'


def primary_lang(lang: str) -> str:
    return "ja" if lang == "both" else lang


_FIGURE = '{{#Figure}}<div class="figure">{{Figure}}</div>{{/Figure}}'
_FRONT_CONTEXT = '{{#Exercise}}<div class="front-context">{{Exercise}}</div>{{/Exercise}}'
_BACK_CONTEXT = '{{#Exercise}}<div class="back-context">{{Exercise}}</div>{{/Exercise}}'


def _basic_templates(lang: str) -> list[dict]:
    """One language on the front; in 'both', the other language only in a closed <details> block."""
    one = primary_lang(lang)
    front = _FRONT_CONTEXT + _field(one, f"Term_{one}", "term")
    back_text = _field(one, f"Explanation_{one}", "explanation")
    if lang == "both":
        front += other_language("en", _field("en", "Term_en", "term-other"))
        back_text += other_language("en", _field("en", "Explanation_en", "explanation"))
    name = {"ja": "用語 → 説明", "en": "Term → explanation", "both": "Term → explanation (ja + en)"}[lang]
    return [{"name": name, "qfmt": front,
             "afmt": f'{front}<hr id="answer">{back_text}{_FIGURE}{_BACK_CONTEXT}'}]


def _cloze_templates(lang: str) -> list[dict]:
    one = primary_lang(lang)
    front = f'<div lang="{one}">{{{{cloze:Text_{one}}}}}</div>'
    terms = _field(one, f"Term_{one}", "term-other")
    if lang == "both":
        front += other_language("en", '<div lang="en">{{cloze:Text_en}}</div>')
        terms += other_language("en", _field("en", "Term_en", "term-other"))
    return [{"name": "Cloze", "qfmt": front, "afmt": f'{front}<hr id="answer">{terms}{_FIGURE}'}]


def _reverse_templates(lang: str) -> list[dict]:
    """Definition -> term. The context line is the front's cue only (it never names the term)."""
    one = primary_lang(lang)
    front = '<div class="cue">{{Context}}</div>' + _field(one, f"Definition_{one}", "explanation")
    answer = _field(one, f"Term_{one}", "term")
    if lang == "both":
        front += other_language("en", _field("en", "Definition_en", "explanation"))
        answer += other_language("en", _field("en", "Term_en", "term-other"))
    name = {"ja": "説明 → 用語", "en": "Definition → term", "both": "Definition → term (ja + en)"}[lang]
    return [{"name": name, "qfmt": front, "afmt": f'{front}<hr id="answer">{answer}'}]


def note_types(lang: str) -> dict:
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


def stamped_note(mod: int, **kwargs):
    note = _stamped()[1](**kwargs)
    note.mod = mod
    return note


def model_hash(model) -> str:
    content = {"fields": [f["name"] for f in model.fields], "templates": model.templates, "css": model.css,
               "type": model.model_type}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def ja_block(text: str) -> str:
    return f'<div lang="ja">{text}</div>'

