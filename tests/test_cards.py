"""The deck: concept data, figures, and the .apkg/CSV as the real Anki (PyPI `anki`) imports them, headless."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from llmstudy.cards import figures
from llmstudy.cards.data import CONCEPTS_DIR, CardDataError, load_concepts
from llmstudy.cards.deck import ROOT_DECK, build_apkg, build_csv, stale_revisions
from llmstudy.catalog import EXERCISES

T0 = 1_700_000_000.0       # a fixed past "now" for builds (before any learner edit), independent of the clock


# --- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def concepts():
    return load_concepts()


@pytest.fixture(scope="module")
def built(concepts, tmp_path_factory):
    """The 'both' deck, built once with a fresh revisions file at T0."""
    d = tmp_path_factory.mktemp("deck")
    summary = build_apkg(concepts, d / "deck.apkg", "both", revisions_path=d / "revisions.json", now=lambda: T0)
    return d, summary


def new_collection(directory: Path):
    from anki.collection import Collection
    directory.mkdir(parents=True, exist_ok=True)
    return Collection(str(directory / "collection.anki2"))


def import_apkg(col, path: Path):
    """Import with Anki's default options (update notes only when the incoming one is newer); returns the log."""
    from anki.collection import ImportAnkiPackageOptions, ImportAnkiPackageRequest
    return col.import_anki_package(ImportAnkiPackageRequest(package_path=str(path),
                                                            options=ImportAnkiPackageOptions())).log


def notes_by_id(col) -> dict[str, object]:
    """concept id -> list of the collection's notes for it (basic and cloze)."""
    out: dict[str, list] = {}
    for nid in col.find_notes(""):
        note = col.get_note(nid)
        out.setdefault(note["Id"], []).append(note)
    return out


def expected_notes(concepts) -> int:
    """A basic note per concept, plus a cloze note and a reverse note where the concept has them."""
    return sum(1 + bool(c.cloze_ja) + bool(c.reverse_ja) for c in concepts)


def expected_cards(concepts) -> int:
    """One card per basic and reverse note, one per distinct cloze number."""
    return sum(1 + bool(c.reverse_ja) + len(set(re.findall(r"\{\{c(\d+)::", c.cloze_ja or ""))) for c in concepts)


def write_concepts(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


CONCEPT = """\
  - id: {id}
    term_ja: 用語
    term_en: term
    explanation_ja: 説明{html}
    explanation_en: explanation
    tags: [{tags}]
"""


def one_file(*concepts_yaml: str, section="a") -> str:
    return f"section: {section}\ntitle_en: A\ntitle_ja: A\nconcepts:\n" + "".join(concepts_yaml)


# --- content ------------------------------------------------------------------------------------------------------
# Every topic the issue names for the notes; each must be a concept of its own.
REQUIRED_CONCEPTS = [
    "context-window", "prompt", "completion", "inference", "llm-use-cases",
    "rnn", "rnn-scaling-problem",
    "self-attention", "encoder", "decoder", "tokenizer", "embedding", "positional-encoding", "multi-head-attention",
    "softmax-output",
    "encoder-only-model", "encoder-decoder-model", "decoder-only-model",
    "in-context-learning", "zero-shot-inference", "one-shot-inference", "few-shot-inference", "answer-format-cue",
    "max-new-tokens", "stop-token", "greedy-decoding", "random-sampling", "top-k-sampling", "top-p-sampling",
    "temperature", "top-k-and-top-p-together",
    "project-lifecycle", "lifecycle-scope", "lifecycle-select", "lifecycle-adapt-and-align", "fine-tuning", "rlhf",
    "lifecycle-evaluate", "application-integration",
    "flan-t5", "few-shot-limits",
]


def test_every_topic_of_the_notes_has_a_concept(concepts):
    ids = {c.id for c in concepts}
    assert not [i for i in REQUIRED_CONCEPTS if i not in ids]


def test_model_families_name_their_example_models(concepts):
    by_id = {c.id: c for c in concepts}
    for cid, models in {"encoder-only-model": ["BERT"], "encoder-decoder-model": ["BART", "T5"],
                        "decoder-only-model": ["GPT", "LLaMA", "BLOOM", "Jurassic"]}.items():
        for model in models:
            assert model in by_id[cid].explanation_en and model in by_id[cid].explanation_ja, (cid, model)


def test_order_is_consecutive_and_follows_the_files(concepts):
    assert [c.order for c in concepts] == list(range(1, len(concepts) + 1))
    files = [c.source for c in concepts]
    assert files == sorted(files), "concepts must come file by file, in file-name (lecture) order"
    assert concepts[0].id == "large-language-model"


def test_every_exercise_is_practised_by_some_concept(concepts):
    linked = {c.exercise for c in concepts}
    assert {e.id for e in EXERCISES} <= linked


def test_japanese_fields_have_no_spaces_between_japanese_characters(concepts):
    # YAML's folded style joins lines with a space; the loader must remove it between Japanese characters.
    gap = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff] [\u3040-\u30ff\u4e00-\u9fff]|[、。] ")
    assert not [c.id for c in concepts if gap.search(c.explanation_ja)]


def test_committed_revisions_match_the_concepts(concepts):
    stale = stale_revisions(concepts, CONCEPTS_DIR / "revisions.json")
    assert stale == [], (f"cards/concepts/revisions.json is out of date for {stale}: run "
                         "`llmstudy cards export --lang ja`, `--lang en` and `--lang both`, then commit the file")


# --- bad input ----------------------------------------------------------------------------------------------------
BAD_INPUTS = {
    "duplicate id": (
        {"01_a.yaml": one_file(CONCEPT.format(id="dup", html="", tags="x")),
         "02_b.yaml": one_file(CONCEPT.format(id="dup", html="", tags="x"), section="b")},
        "02_b.yaml", "dup", "duplicate id"),
    "missing required field": (
        {"01_a.yaml": one_file(CONCEPT.format(id="no-term", html="", tags="x").replace("    term_en: term\n", ""))},
        "01_a.yaml", "no-term", "missing required field 'term_en'"),
    "tag with a space": (
        {"01_a.yaml": one_file(CONCEPT.format(id="spacey", html="", tags="'llm::has space'"))},
        "01_a.yaml", "spacey", "contains a space"),
    "unclosed tag": (
        {"01_a.yaml": one_file(CONCEPT.format(id="open-b", html="<b>bold", tags="x"))},
        "01_a.yaml", "open-b", "<b> is never closed"),
    "misnested tags": (
        {"01_a.yaml": one_file(CONCEPT.format(id="nested", html="<b><i>x</b></i>", tags="x"))},
        "01_a.yaml", "nested", "</b> closes <i>"),
    "stray closing tag": (
        {"01_a.yaml": one_file(CONCEPT.format(id="stray", html="x</div>", tags="x"))},
        "01_a.yaml", "stray", "</div> closes nothing"),
    "cloze numbers differ": (
        {"01_a.yaml": one_file(CONCEPT.format(id="cloze", html="", tags="x")
                               + '    cloze_ja: "{{c1::a}} {{c2::b}}"\n    cloze_en: "{{c1::a}}"\n')},
        "01_a.yaml", "cloze", "number the deletions the same"),
    "unknown exercise": (
        {"01_a.yaml": one_file(CONCEPT.format(id="ex", html="", tags="x") + "    exercise: nope\n")},
        "01_a.yaml", "ex", "unknown exercise 'nope'"),
    "unknown stage": (
        {"01_a.yaml": one_file(CONCEPT.format(id="st", html="", tags="x") + "    stage: deploy\n")},
        "01_a.yaml", "st", "unknown stage 'deploy'; use one of scope, select"),
    "deeper is not a later week": (
        {"01_a.yaml": one_file(CONCEPT.format(id="wk", html="", tags="x") + "    deeper: 1\n")},
        "01_a.yaml", "wk", "'deeper' must be the week number where the course goes deeper (2 or 3), got 1"),
    "reverse in one language only": (
        {"01_a.yaml": one_file(CONCEPT.format(id="rv", html="", tags="x") + "    reverse_en: a definition\n")},
        "01_a.yaml", "rv", "give both reverse_ja and reverse_en, or neither"),
    "unknown figure": (
        {"01_a.yaml": one_file(CONCEPT.format(id="fig", html="", tags="x") + "    figure: nope\n")},
        "01_a.yaml", "fig", "unknown figure 'nope'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_the_file_and_the_concept(case, tmp_path):
    files, file_name, concept_id, what = BAD_INPUTS[case]
    with pytest.raises(CardDataError) as err:
        load_concepts(write_concepts(tmp_path, files))
    message = str(err.value)
    assert file_name in message and f"'{concept_id}'" in message and what in message, message
    assert "\n" not in message


def test_void_elements_and_escaped_angle_brackets_are_balanced(tmp_path):
    html = "a<br>b<img src='x.png'> &lt;i&gt; p &lt; 1 <i>ok</i>"
    [c] = load_concepts(write_concepts(tmp_path, {"01_a.yaml": one_file(CONCEPT.format(id="ok", html=html, tags="x"))}))
    assert c.tags == ("llm::week1::a", "x")


# --- figures ------------------------------------------------------------------------------------------------------
def test_figures_are_byte_identical_across_renders_and_carry_no_software_stamp():
    for name in figures.FIGURES:
        for lang in figures.LANGS:
            # render() is cached per process (the deck fixture may have filled it); draw() always draws anew.
            first, second = figures.draw(name, lang), figures.render(name, lang)
            assert first == second, (name, lang)
            assert first.startswith(b"\x89PNG") and b"Software" not in first and b"matplotlib" not in first, name


def test_positional_encoding_follows_the_paper_formula():
    pe = figures.sinusoidal_positional_encoding(50, 16)
    for pos, i in [(0, 0), (7, 0), (7, 3), (49, 7)]:
        angle = pos / 10000 ** (2 * i / 16)
        # float64 throughout: the only difference is rounding order, far below 1e-12.
        assert abs(pe[pos, 2 * i] - np.sin(angle)) < 1e-12 and abs(pe[pos, 2 * i + 1] - np.cos(angle)) < 1e-12
    assert len({tuple(np.round(row, 6)) for row in pe}) == 50, "every position must get its own vector"


def test_softmax_temperature_sharpens_and_flattens():
    p_low, p_one, p_high = (figures.softmax(figures.LOGITS, t) for t in (0.5, 1.0, 2.0))
    assert p_low.max() > p_one.max() > p_high.max()
    assert abs(p_one.sum() - 1) < 1e-12       # float64 sum of ten terms


def test_top_k_then_top_p_figure_matches_transformers_warpers():
    """The figure (and the card on combining top-k and top-p) claims transformers' order and renormalisation."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    probs = figures.softmax(figures.LOGITS)
    for k, p in [(6, 0.75), (6, 0.8), (3, 0.9), (10, 0.5)]:
        by_k, kept = figures.top_k_then_top_p(probs, k, p)
        scores = torch.tensor(figures.LOGITS, dtype=torch.float64)[None]
        scores = TopPLogitsWarper(top_p=p)(None, TopKLogitsWarper(top_k=k)(None, scores))
        assert kept.tolist() == torch.isfinite(scores[0]).tolist(), (k, p)
        assert (kept <= by_k).all()


# --- the .apkg in real Anki ---------------------------------------------------------------------------------------
def test_apkg_imports_with_every_note_card_field_and_deck(concepts, built, tmp_path):
    d, summary = built
    col = new_collection(tmp_path)
    log = import_apkg(col, d / "deck.apkg")
    assert len(log.new) == col.note_count() == expected_notes(concepts) == summary.notes
    assert col.card_count() == expected_cards(concepts) == summary.cards

    notes = notes_by_id(col)
    for c in concepts:
        kinds = {n.note_type()["name"]: n for n in notes[c.id]}
        basic = kinds["llmstudy concept (both)"]
        assert (basic["Term_ja"], basic["Term_en"], basic["Explanation_ja"], basic["Explanation_en"]) == \
               (c.term_ja, c.term_en, c.explanation_ja, c.explanation_en)
        assert set(basic.tags) == set(c.tags)
        if c.cloze_ja:     # each cloze text starts with its context cue
            cloze = kinds["llmstudy cloze (both)"]
            assert cloze["Text_ja"].endswith("</div>" + c.cloze_ja) and cloze["Text_en"].endswith("</div>" + c.cloze_en)
        if c.reverse_ja:
            reverse = kinds["llmstudy reverse (both)"]
            assert (reverse["Definition_ja"], reverse["Term_en"]) == (c.reverse_ja, c.term_en)
        expected_deck = next(name for name in summary.decks if name.endswith(c.section_title_ja))
        assert {col.decks.name(card.did) for n in notes[c.id] for card in n.cards()} == {expected_deck}

    names = {d.name for d in col.decks.all_names_and_ids()} - {"Default"}
    assert names == set(summary.decks)
    assert all(n == ROOT_DECK["both"] or n.startswith(ROOT_DECK["both"] + "::") for n in names)
    assert len(names) == 1 + len({c.section for c in concepts})


def test_new_cards_come_in_lecture_order(concepts, built, tmp_path):
    col = new_collection(tmp_path)
    import_apkg(col, built[0] / "deck.apkg")
    order = {c.id: c.order for c in concepts}
    basic = [col.get_card(cid) for cid in col.find_cards('note:"llmstudy concept (both)"')]
    dues = sorted((card.due, order[card.note()["Id"]]) for card in basic)
    assert [o for _, o in dues] == sorted(order.values())


def test_every_media_file_is_present_and_referenced(concepts, built, tmp_path):
    d, summary = built
    col = new_collection(tmp_path)
    import_apkg(col, d / "deck.apkg")
    check = col.media.check()
    assert list(check.missing) == [] and list(check.unused) == []
    present = sorted(p.name for p in Path(col.media.dir()).iterdir())
    # The 'both' deck shows the Japanese side's figures (Japanese labels).
    assert present == sorted(figures.media_name(f, "ja") for f in {c.figure for c in concepts if c.figure}) == \
        sorted(summary.media)
    with zipfile.ZipFile(d / "deck.apkg") as z:
        assert sorted(json.loads(z.read("media")).values()) == present


def test_japanese_text_is_marked_lang_ja(built, tmp_path):
    col = new_collection(tmp_path)
    import_apkg(col, built[0] / "deck.apkg")
    card = col.get_card(col.find_cards('"Id:temperature" note:"llmstudy concept (both)"')[0])
    answer = card.answer()
    assert '<div lang="ja" class="term">temperature（温度）</div>' in answer
    assert re.search(r'<div lang="ja" class="explanation">softmax の前に', answer)


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_single_language_variants_show_only_their_language(concepts, lang, tmp_path):
    out = tmp_path / f"deck-{lang}.apkg"
    build_apkg(concepts, out, lang, revisions_path=None, now=lambda: T0)
    col = new_collection(tmp_path / "col")
    import_apkg(col, out)
    assert col.card_count() == expected_cards(concepts)
    assert {d.name.split("::")[0] for d in col.decks.all_names_and_ids()} - {"Default"} == {ROOT_DECK[lang]}
    c = {c.id: c for c in concepts}["top-p-sampling"]
    other = "en" if lang == "ja" else "ja"
    shown_all = ""
    for cid in col.find_cards('"Id:top-p-sampling"'):
        card = col.get_card(cid)
        shown = card.question() + card.answer()
        shown_all += shown
        for field in ("explanation", "reverse", "term"):
            assert getattr(c, f"{field}_{other}") not in shown, (field, card.note_type()["name"])
        assert "<details" not in shown           # only the 'both' variant offers the other language
        assert ("累積" in shown) <= (lang == "ja") and ("cumulative" in shown) <= (lang == "en")
    assert getattr(c, f"explanation_{lang}") in shown_all and getattr(c, f"reverse_{lang}") in shown_all


def test_reimporting_a_rebuilt_deck_adds_and_updates_nothing(concepts, built, tmp_path):
    d, _ = built
    col = new_collection(tmp_path / "col")
    import_apkg(col, d / "deck.apkg")
    rebuilt = tmp_path / "rebuilt.apkg"
    revisions = tmp_path / "revisions.json"
    shutil.copy(d / "revisions.json", revisions)
    summary = build_apkg(concepts, rebuilt, "both", revisions_path=revisions, now=lambda: T0 + 86400)
    assert summary.restamped == []
    log = import_apkg(col, rebuilt)
    assert (len(log.new), len(log.updated)) == (0, 0)
    assert col.note_count() == expected_notes(concepts)


def test_learner_edits_survive_reimporting_an_unchanged_deck(built, tmp_path):
    d, _ = built
    col = new_collection(tmp_path)
    import_apkg(col, d / "deck.apkg")
    note = notes_by_id(col)["temperature"][0]
    note["Term_en"] = "temperature (my own note)"
    col.update_note(note)
    import_apkg(col, d / "deck.apkg")
    assert col.get_note(note.id)["Term_en"] == "temperature (my own note)"


def test_an_edited_rebuild_updates_the_same_notes(concepts, built, tmp_path):
    d, _ = built
    col = new_collection(tmp_path / "col")
    import_apkg(col, d / "deck.apkg")
    before = col.note_count()
    revisions = tmp_path / "revisions.json"
    shutil.copy(d / "revisions.json", revisions)
    edited = [dataclasses.replace(c, explanation_en=c.explanation_en + " (revised)") if c.id == "top-p-sampling"
              else c for c in concepts]
    # Same clock second as the first build: the new stamp must still be strictly newer.
    summary = build_apkg(edited, tmp_path / "edited.apkg", "both", revisions_path=revisions, now=lambda: T0)
    assert summary.restamped == ["top-p-sampling"]
    log = import_apkg(col, tmp_path / "edited.apkg")
    assert len(log.new) == 0 and {n.fields[0] for n in log.updated} == {"top-p-sampling"}
    assert col.note_count() == before
    [basic] = [n for n in notes_by_id(col)["top-p-sampling"] if "Explanation_en" in n]
    assert basic["Explanation_en"].endswith("(revised)")
    assert json.loads(revisions.read_text())["top-p-sampling"]["mod"] == T0 + 1


def test_the_same_data_gives_a_byte_identical_deck(concepts, built, tmp_path):
    d, summary = built
    revisions = tmp_path / "revisions.json"
    shutil.copy(d / "revisions.json", revisions)
    figures.render.cache_clear()             # draw the figures again rather than reuse this process's PNGs
    build_apkg(concepts, tmp_path / "again.apkg", "both", revisions_path=revisions, now=lambda: T0 + 12345)
    assert (tmp_path / "again.apkg").read_bytes() == (d / "deck.apkg").read_bytes()
    assert summary.notes > 100 and len(summary.media) == 5     # not trivially equal
    with zipfile.ZipFile(d / "deck.apkg") as z:    # two quick builds could share a zip timestamp by luck: check it
        assert {info.date_time for info in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_failed_build_leaves_no_file_behind(concepts, tmp_path, monkeypatch):
    def broken(name, lang):
        raise RuntimeError("matplotlib broke")
    monkeypatch.setattr(figures, "render", broken)
    out = tmp_path / "deck.apkg"
    with pytest.raises(RuntimeError):
        build_apkg(concepts, out, "both", revisions_path=tmp_path / "revisions.json", now=lambda: T0)
    assert list(tmp_path.iterdir()) == []


# --- CSV ----------------------------------------------------------------------------------------------------------
def test_csv_has_ankis_header_lines_and_imports_into_stock_note_types(concepts, tmp_path):
    from anki.collection import ImportCsvRequest

    out = tmp_path / "deck.csv"
    summary = build_csv(concepts, out, "both")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[:6] == ["#separator:tab", "#html:true", "#guid column:1", "#notetype column:2", "#deck column:3",
                         "#tags column:6"]

    col = new_collection(tmp_path / "col")
    log = col.import_csv(ImportCsvRequest(path=str(out), metadata=col.get_csv_metadata(str(out), None))).log
    n_notes = expected_notes(concepts)
    assert len(log.new) == col.note_count() == n_notes == summary.notes
    assert {d.name for d in col.decks.all_names_and_ids()} - {"Default"} == set(summary.decks)
    note = notes_by_id_csv(col)["temperature（温度）"]
    assert "<code>softmax(logits / T)</code>" in note["Back"] and '<div lang="ja">' in note["Back"]
    assert "<details" in note["Back"] and "<details" in note["Front"]         # English on demand

    again = col.import_csv(ImportCsvRequest(path=str(out), metadata=col.get_csv_metadata(str(out), None))).log
    assert len(again.new) == 0 and col.note_count() == n_notes


def notes_by_id_csv(col) -> dict[str, object]:
    """Stock Basic notes keyed by the Japanese term of their front."""
    out = {}
    for nid in col.find_notes('note:Basic'):
        note = col.get_note(nid)
        m = re.match(r'<div>[^<]*</div><div lang="ja">(.*?)</div>', note["Front"])      # the cue, then the term
        out.setdefault(m.group(1), note)       # a reverse note's front is its definition: never a term
    return out
