"""The deck's content: load and check cards/concepts/*.yaml.

One YAML file per course section, named `NN_<section>.yaml` so that file order is lecture order:

    section: decoding                     # the subdeck; also the tag llm::week1::decoding
    title_en: Generation settings         # the subdeck's name in Anki
    title_ja: 生成の設定
    concepts:                             # in the order the lecture introduces them
      - id: top-k-sampling                # stable: note GUID and FSRS review-state key
        term_ja: top-k サンプリング
        term_en: top-k sampling
        explanation_ja: 確率の高い上位 <i>k</i> 個だけを残して…
        explanation_en: Keep only the <i>k</i> most likely tokens…
        tags: [llm::sampling]             # optional, added to the section tag
        cloze_ja: "{{c1::top-k}} サンプリングは…"   # optional, Anki cloze syntax
        cloze_en: "{{c1::Top-k}} sampling keeps…"
        reverse_ja: 確率が高い順に…        # optional: a definition -> term card (both languages, or neither)
        reverse_en: Sampling only among…
        stage: adapt-and-align            # optional: the lifecycle stage, shown in the card's context cue
        deeper: 2                         # optional: the week where the course goes deeper
        figure: top-k-top-p               # optional, a name in cards/figures.py
        exercise: sampling                # optional, an id in llmstudy/catalog.py

Every mistake in a data file is a CardDataError whose message names the file and the concept.
This module imports only the standard library and PyYAML, so `llmstudy review` and `llmstudy cards` start fast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import yaml

CONCEPTS_DIR = Path(resources.files("llmstudy.cards") / "concepts")       # package data, in a checkout or a wheel
TAG_ROOT = "llm::week1"

REQUIRED = ("id", "term_ja", "term_en", "explanation_ja", "explanation_en")
OPTIONAL = ("tags", "cloze_ja", "cloze_en", "reverse_ja", "reverse_en", "stage", "deeper", "figure", "exercise")
HTML_FIELDS = ("term_ja", "term_en", "explanation_ja", "explanation_en", "cloze_ja", "cloze_en", "reverse_ja",
               "reverse_en")
# The lifecycle stages of the course (lecture "Generative AI project lifecycle"), as a card's context cue shows them.
STAGES = {"scope": "Scope", "select": "Select", "adapt-and-align": "Adapt and align",
          "application-integration": "Application integration"}
COURSE_WEEKS = (2, 3)       # `deeper:` names a later week of the three-week course
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")    # "context-window": safe in GUIDs, file names, URLs
CLOZE_PATTERN = re.compile(r"\{\{c\d+::.+?\}\}", re.DOTALL)
# Elements that never take a closing tag (HTML Living Standard, "void elements").
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass(frozen=True)
class Concept:
    id: str                 # stable, e.g. "context-window"; also the key of FSRS review state
    term_ja: str
    term_en: str
    explanation_ja: str     # may contain simple HTML
    explanation_en: str
    tags: tuple[str, ...]   # hierarchical, e.g. "llm::week1::decoding", no spaces
    order: int              # lecture order (position in the course), used to introduce new cards in order
    section: str            # e.g. "decoding"; the subdeck
    cloze_ja: str | None = None     # Anki cloze syntax {{c1::...}}
    cloze_en: str | None = None
    reverse_ja: str | None = None   # a definition that asks for the term (a reverse card)
    reverse_en: str | None = None
    stage: str | None = None        # a key of STAGES
    deeper: int | None = None       # the week where the course goes deeper, from COURSE_WEEKS
    figure: str | None = None       # figure name rendered by cards/figures.py
    exercise: str | None = None     # exercise id from llmstudy/catalog.py that practises it
    section_title_en: str = ""      # the subdeck's display name, e.g. "Generation settings"
    section_title_ja: str = ""
    source: str = ""                # the data file it came from, for error messages


class CardDataError(ValueError):
    """A mistake in a concepts data file; the message names the file and the concept id."""


def load_concepts(directory: Path | None = None) -> list[Concept]:
    """Every concept in `directory`/*.yaml (default cards/concepts/), checked, sorted by lecture order.

    Files are read in name order (`01_basics.yaml`, `02_history.yaml`, ...) and concepts in file order;
    `order` counts from 1 across all files.
    """
    directory = CONCEPTS_DIR if directory is None else Path(directory)
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CardDataError(f"{directory}: no concept files (*.yaml) found")

    from llmstudy.catalog import EXERCISES
    from llmstudy.cards.figures import FIGURES      # names only; matplotlib is imported when a figure is drawn
    exercise_ids = {e.id for e in EXERCISES}

    concepts: list[Concept] = []
    seen: dict[str, str] = {}               # concept id -> file name it first appeared in
    sections: dict[str, str] = {}           # section -> file name
    for path in files:
        section, titles, entries = _read_file(path)
        if section in sections:
            raise CardDataError(f"{path.name}: section '{section}' is also used by {sections[section]}; "
                                f"give each file its own section")
        sections[section] = path.name
        for index, entry in enumerate(entries):
            where = _where(path, entry, index)
            if not isinstance(entry, dict):
                raise CardDataError(f"{where}: each concept must be a mapping of fields, got {type(entry).__name__}")
            concept = _concept(entry, where, path, section, titles, order=len(concepts) + 1)
            if concept.id in seen:
                raise CardDataError(f"{where}: duplicate id '{concept.id}' (first used in {seen[concept.id]}); "
                                    f"ids must be unique across all files")
            if concept.exercise is not None and concept.exercise not in exercise_ids:
                raise CardDataError(f"{where}: unknown exercise '{concept.exercise}'; "
                                    f"use one of {', '.join(sorted(exercise_ids))}")
            if concept.figure is not None and concept.figure not in FIGURES:
                raise CardDataError(f"{where}: unknown figure '{concept.figure}'; "
                                    f"use one of {', '.join(sorted(FIGURES))} (cards/figures.py)")
            seen[concept.id] = path.name
            concepts.append(concept)
    return sorted(concepts, key=lambda c: c.order)


def _read_file(path: Path) -> tuple[str, tuple[str, str], list]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CardDataError(f"{path.name}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise CardDataError(f"{path.name}:{line} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise CardDataError(f"{path.name}: expected a mapping with 'section', 'title_en', 'title_ja' and 'concepts'")
    for key in ("section", "title_en", "title_ja", "concepts"):
        if key not in data:
            raise CardDataError(f"{path.name}: missing top-level key '{key}'")
    section = data["section"]
    if not isinstance(section, str) or not ID_PATTERN.match(section):
        raise CardDataError(f"{path.name}: section must be lower-case words joined by '-', got {section!r}")
    if not isinstance(data["concepts"], list) or not data["concepts"]:
        raise CardDataError(f"{path.name}: 'concepts' must be a non-empty list")
    unknown = set(data) - {"section", "title_en", "title_ja", "concepts"}
    if unknown:
        raise CardDataError(f"{path.name}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    return section, (str(data["title_en"]), str(data["title_ja"])), data["concepts"]


def _where(path: Path, entry, index: int) -> str:
    name = entry.get("id") if isinstance(entry, dict) else None
    return f"{path.name}: concept '{name}'" if name else f"{path.name}: concept #{index + 1} (no id)"


def _concept(entry: dict, where: str, path: Path, section: str, titles: tuple[str, str], order: int) -> Concept:
    for key in REQUIRED:
        value = entry.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise CardDataError(f"{where}: missing required field '{key}'")
        if not isinstance(value, str):
            raise CardDataError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
    unknown = set(entry) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise CardDataError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(REQUIRED + OPTIONAL)}")
    if not ID_PATTERN.match(entry["id"]):
        raise CardDataError(f"{where}: id must be lower-case words joined by '-' (like 'context-window')")
    for key in ("cloze_ja", "cloze_en", "reverse_ja", "reverse_en", "stage", "figure", "exercise"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise CardDataError(f"{where}: field '{key}' must be text, got {type(entry[key]).__name__}")

    if entry.get("stage") is not None and entry["stage"] not in STAGES:
        raise CardDataError(f"{where}: unknown stage '{entry['stage']}'; use one of {', '.join(STAGES)}")
    deeper = entry.get("deeper")
    if deeper is not None and (isinstance(deeper, bool) or deeper not in COURSE_WEEKS):
        raise CardDataError(f"{where}: 'deeper' must be the week number where the course goes deeper "
                            f"({' or '.join(map(str, COURSE_WEEKS))}), got {deeper!r}")
    if bool(entry.get("reverse_ja")) != bool(entry.get("reverse_en")):
        raise CardDataError(f"{where}: give both reverse_ja and reverse_en, or neither")

    extra = entry.get("tags") or []
    if isinstance(extra, str) or not isinstance(extra, list):
        raise CardDataError(f"{where}: 'tags' must be a list, like [llm::sampling]")
    tags = [f"{TAG_ROOT}::{section}"]
    for tag in extra:
        if not isinstance(tag, str) or not tag:
            raise CardDataError(f"{where}: tag {tag!r} must be non-empty text")
        if any(ch.isspace() for ch in tag):
            raise CardDataError(f"{where}: tag '{tag}' contains a space; Anki splits tags on spaces, "
                                f"use '::' for hierarchy and '_' or '-' inside words")
        if tag not in tags:
            tags.append(tag)

    for key in HTML_FIELDS:
        if entry.get(key):
            problem = html_problem(entry[key])
            if problem:
                raise CardDataError(f"{where}: unbalanced HTML in '{key}': {problem}")
    for key in ("cloze_ja", "cloze_en"):
        if entry.get(key) and not CLOZE_PATTERN.search(entry[key]):
            raise CardDataError(f"{where}: '{key}' has no cloze deletion; mark the hidden part like {{{{c1::text}}}}")
    if bool(entry.get("cloze_ja")) != bool(entry.get("cloze_en")):
        raise CardDataError(f"{where}: give both cloze_ja and cloze_en, or neither")
    if entry.get("cloze_ja") and _cloze_numbers(entry["cloze_ja"]) != _cloze_numbers(entry["cloze_en"]):
        # The bilingual cloze card shows both texts: c1 in Japanese and c1 in English must be the same card.
        raise CardDataError(f"{where}: cloze_ja uses {_cloze_numbers(entry['cloze_ja'])} but cloze_en uses "
                            f"{_cloze_numbers(entry['cloze_en'])}; number the deletions the same in both")

    return Concept(
        id=entry["id"], term_ja=_ja(entry["term_ja"]), term_en=entry["term_en"].strip(),
        explanation_ja=_ja(entry["explanation_ja"]), explanation_en=entry["explanation_en"].strip(),
        tags=tuple(tags), order=order, section=section,
        cloze_ja=_ja(entry.get("cloze_ja")), cloze_en=_strip(entry.get("cloze_en")),
        reverse_ja=_ja(entry.get("reverse_ja")), reverse_en=_strip(entry.get("reverse_en")),
        stage=entry.get("stage"), deeper=deeper, figure=entry.get("figure"), exercise=entry.get("exercise"),
        section_title_en=titles[0], section_title_ja=titles[1], source=path.name,
    )


def cue(concept: Concept, lang: str) -> str:
    """The context cue a card's front shows: the lecture (its section) and, where one applies, the lifecycle stage.
    lang: "ja" or "en"."""
    lecture = concept.section_title_ja if lang == "ja" else concept.section_title_en
    if concept.stage is None:
        return f"講義：{lecture}" if lang == "ja" else f"Lecture: {lecture}"
    stage = STAGES[concept.stage]
    return f"講義：{lecture} · 段階：{stage}" if lang == "ja" else f"Lecture: {lecture} · Stage: {stage}"


def deeper_note(concept: Concept, lang: str) -> str:
    """'The course goes deeper in week 2' (or its Japanese), or '' when it does not say."""
    if concept.deeper is None:
        return ""
    return f"第 {concept.deeper} 週で詳しく学ぶ" if lang == "ja" else f"The course goes deeper in week {concept.deeper}"


def _cloze_numbers(text: str) -> list[str]:
    return sorted(set(re.findall(r"\{\{(c\d+)::", text)))


def _strip(text: str | None) -> str | None:
    return text.strip() if text else None


# YAML's folded style (>-) joins lines with a space; Japanese puts no spaces between words or after 、and 。,
# so drop those.
_CJK = r"\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef"
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) +(?=[{_CJK}])|(?<=[\u3000-\u303f]) +")


def _ja(text: str | None) -> str | None:
    return _CJK_GAP.sub("", text.strip()) if text else None


class _TagBalance(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problem: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if self.problem or tag in VOID_ELEMENTS:
            return
        if not self.open:
            self.problem = f"</{tag}> closes nothing"
        elif self.open[-1] != tag:
            self.problem = f"</{tag}> closes <{self.open[-1]}>"
        else:
            self.open.pop()


def html_problem(text: str) -> str | None:
    """None when every non-void tag in `text` is closed in order; otherwise what is wrong, in a few words."""
    parser = _TagBalance()
    parser.feed(text)
    parser.close()
    if parser.problem:
        return parser.problem
    if parser.open:
        return f"<{parser.open[-1]}> is never closed"
    return None
