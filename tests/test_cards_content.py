"""What the cards say, checked against independent sources where one exists (transformers, the kit's own
solutions, the figure's numbers), and how they are written (one fact, no giveaway, one term style)."""
from __future__ import annotations

import html
import re

import pytest

from llmstudy.cards import figures
from llmstudy.cards.data import STAGES, cue, load_concepts
from llmstudy.cards.deck import build_csv, exercise_label, note_fields
from llmstudy.cards.note_types import CSS


@pytest.fixture(scope="module")
def deck():
    return {c.id: c for c in load_concepts()}


def text(html_text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


def all_text(c, lang: str) -> str:
    return " ".join(getattr(c, f"{f}_{lang}") or "" for f in ("term", "explanation", "cloze", "reverse"))


# --- section 1: errors ------------------------------------------------------------------------------------------
def test_context_window_sizes_span_512_to_a_million_and_overflow_is_not_only_cutting(deck):
    c = deck["context-window"]
    assert "512" in c.explanation_en and "million" in c.explanation_en and "100 万" in c.explanation_ja
    assert "has to be cut" not in all_text(c, "en") and "切り詰めるしかない" not in all_text(c, "ja")
    overflow = deck["context-window-overflow"]
    for way in ("chunk", "summaris", "retriev"):
        assert way in overflow.explanation_en, way


def test_minilm_the_kits_bert_really_has_a_512_token_window(deck):
    """The card's 512 for BERT, against the BERT the kit ships (all-MiniLM-L6-v2's config)."""
    import json
    from llmstudy import models
    info = next(i for i in models.available() if i.name == "minilm")
    if not info.files:
        pytest.skip("the MiniLM package is not installed")
    configs = [p for p in __import__("pathlib").Path(info.files).rglob("config.json")]
    assert configs, info.files
    assert json.loads(configs[0].read_text())["max_position_embeddings"] == 512


def test_transformers_refuses_temperature_0_with_sampling_as_the_card_says(deck):
    """generate() itself, on a tiny randomly initialised GPT-2 (nothing downloaded): do_sample=True with
    temperature=0 raises ValueError, do_sample=False is greedy."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    c = deck["low-temperature-and-greedy"]
    assert "ValueError" in c.explanation_en and "do_sample=False" in c.explanation_en
    assert "implementations special-case" not in c.explanation_en
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)).eval()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError):
        model.generate(ids, do_sample=True, temperature=0.0, max_new_tokens=1, pad_token_id=0)
    greedy = model.generate(ids, do_sample=False, max_new_tokens=1, pad_token_id=0)
    assert int(greedy[0, -1]) == int(model(ids).logits[0, -1].argmax())


def test_our_sample_next_token_treats_temperature_0_as_greedy_as_the_card_says(deck):
    import torch
    from llmstudy.solutions.sampling import sample_next_token
    assert "sample_next_token" in deck["temperature-zero-in-this-kit"].explanation_en
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    for seed in range(5):
        token = sample_next_token(logits, temperature=0, generator=torch.Generator().manual_seed(seed))
        assert int(token.reshape(-1)[0]) == 1


def test_self_attention_weights_are_computed_per_input_not_learned(deck):
    c = deck["self-attention"]
    assert "learns how strongly" not in c.explanation_en
    assert "not learned parameters" in c.explanation_en and "computed for each input" in c.explanation_en
    assert "学習されるパラメータではなく" in c.explanation_ja and "入力ごとに計算" in c.explanation_ja
    assert "query" in c.explanation_en and "key" in c.explanation_en


def test_top_k_then_top_p_card_quotes_the_figures_own_masses(deck):
    """The card's 0.743 / 0.799 are the figure's raw and renormalised mass before 'tea', and tea is cut only by the
    sequence, not by an AND of the two filters on the raw distribution."""
    probs = figures.softmax(figures.LOGITS)
    by_k, raw_before, renorm_before = figures.cumulative_masses(probs, figures.TOP_K)
    tea = figures.TOKENS.index("tea")
    raw, renorm = f"{raw_before[tea]:.3f}", f"{renorm_before[tea]:.3f}"
    c = deck["top-p-after-top-k-cuts-more"]
    for lang in ("ja", "en"):
        assert raw in all_text(c, lang) and renorm in all_text(c, lang), lang
    kept_by_and = by_k & (raw_before < figures.TOP_P)
    _, kept_in_sequence = figures.top_k_then_top_p(probs, figures.TOP_K, figures.TOP_P)
    assert kept_by_and[tea] and not kept_in_sequence[tea]
    assert "AND" not in deck["top-k-and-top-p-together"].explanation_en


def test_positional_encoding_card_names_rope_for_the_models_the_exercises_use(deck):
    c = deck["positional-encoding"]
    assert "RoPE" in c.explanation_en and "SmolLM2" in c.explanation_en and "RoPE" in c.explanation_ja


def test_embedding_dimension_is_the_base_model_and_written_as_jisuu(deck):
    c = deck["embedding"]
    assert "1024" in c.explanation_en and "base model" in c.explanation_en and "次元数" in c.explanation_ja
    assert not [i for i, x in deck.items() if "ベクトルの大きさ" in all_text(x, "ja")]


def test_decoder_tokens_attend_to_themselves_as_the_causal_mask_does(deck):
    import torch
    from llmstudy.solutions.attention import causal_mask
    mask = causal_mask(5)
    assert bool(torch.diagonal(mask).all())          # True = may attend: each position sees itself
    assert "itself" in deck["decoder"].explanation_en and "自分自身" in deck["decoder"].explanation_ja


def test_rlhf_trains_a_reward_model(deck):
    assert "報酬モデルを学習" in deck["rlhf"].explanation_ja and "reward model" in deck["rlhf"].explanation_en


def test_suiron_means_inference_and_reasoning_is_ronriteki_suiron(deck):
    """推論 is inference; where the English says 'reason', the Japanese says 推論能力 or 論理的推論."""
    for cid, c in deck.items():
        if re.search(r"\breason", all_text(c, "en")):
            assert re.search("推論能力|論理的推論", all_text(c, "ja")), cid


# --- section 2: cards that are easy to learn --------------------------------------------------------------------
def test_answers_are_short_one_fact_each(deck):
    """The longest first-edition answer had 258 Japanese characters and 71 English words; the limits below leave
    room for a definition and one example, not a list."""
    for cid, c in deck.items():
        assert len(text(c.explanation_ja)) <= 220, (cid, len(text(c.explanation_ja)))
        assert len(text(c.explanation_en).split()) <= 70, (cid, len(text(c.explanation_en).split()))
        assert "<li>" not in c.explanation_en, cid                    # no sets


def _visible_fronts(sentence: str):
    """(answer, what the card's front shows) for each deletion cN: cN hidden, the others revealed, as in Anki."""
    numbers = sorted(set(re.findall(r"\{\{c(\d+)::", sentence)))
    for n in numbers:
        hidden = re.findall(rf"\{{\{{c{n}::(.+?)(?:::.+?)?\}}\}}", sentence)
        front = re.sub(rf"\{{\{{c{n}::.+?\}}\}}", "[...]", sentence)
        front = re.sub(r"\{\{c\d+::(.+?)(?:::.+?)?\}\}", r"\1", front)
        for answer in hidden:
            yield text(answer), text(front)


def test_no_cloze_gives_its_answer_away(deck):
    """A deletion's answer may not appear in the rest of the sentence or in the front's context cue."""
    for cid, c in deck.items():
        for lang in ("ja", "en"):
            sentence = getattr(c, f"cloze_{lang}")
            if not sentence:
                continue
            for answer, front in _visible_fronts(sentence):
                shown = (front + " " + cue(c, lang)).lower()
                # English: whole words ("text" is no giveaway in "context"); Japanese has no spaces: any substring.
                found = re.search(rf"\b{re.escape(answer.lower())}\b", shown) if lang == "en" else \
                    answer.lower() in shown
                assert not found, (cid, lang, answer)


def test_top_k_cloze_no_longer_asks_for_k_and_rlhf_hides_no_expansion(deck):
    assert "{{c1::k 個}}" not in deck["top-k-sampling"].cloze_ja
    rlhf = deck["rlhf"].cloze_ja
    assert "RLHF}}" not in rlhf and "{{c" in rlhf


def test_reverse_definitions_never_name_their_term(deck):
    reverse = [c for c in deck.values() if c.reverse_en]
    assert 14 <= len(reverse) <= 20              # "about 15 core terms"
    for c in reverse:
        for lang in ("ja", "en"):
            head = re.split(r"[（(]", getattr(c, f"term_{lang}"))[0].strip().lower()
            assert head not in getattr(c, f"reverse_{lang}").lower(), (c.id, lang)


def test_the_notes_three_misconceptions_have_cards(deck):
    mis = {cid for cid, c in deck.items() if "llm::misconception" in c.tags}
    assert {"prompt-is-not-the-context-window", "input-is-the-prompt-not-the-context",
            "top-p-is-not-top-p-percent"} <= mis


def test_every_card_has_a_context_cue_and_the_later_weeks_are_named(deck):
    for c in deck.values():
        assert c.section_title_en in cue(c, "en") and c.section_title_ja in cue(c, "ja")
        if c.stage:
            assert STAGES[c.stage] in cue(c, "en")
    assert deck["fine-tuning"].deeper == 2 and deck["lifecycle-evaluate"].deeper == 2 and deck["rlhf"].deeper == 3
    fields = note_fields(deck["rlhf"], "en")["basic"]
    assert "The course goes deeper in week 3" in fields[-1]


def test_terms_use_the_english_head_term_with_a_full_width_japanese_gloss(deck):
    for cid, c in deck.items():
        head = re.split(r" \(", c.term_en)[0]
        assert c.term_ja.startswith(head), (cid, c.term_ja, head)
        assert re.fullmatch(r"[^（）()]+（[^（）()]+）", c.term_ja), (cid, c.term_ja)


def test_japanese_text_uses_full_width_parentheses_outside_code(deck):
    for cid, c in deck.items():
        for field in ("term", "explanation", "cloze", "reverse"):
            value = re.sub(r"<code>.*?</code>", "", getattr(c, f"{field}_ja") or "")
            assert "(" not in value and ")" not in value, (cid, field, value)


def test_cards_name_exercises_never_repository_paths(deck, tmp_path):
    assert exercise_label("sampling", "en") == "Exercise 3: Greedy, temperature, top-k and top-p sampling"
    out = tmp_path / "deck.csv"
    build_csv(list(deck.values()), out, "both")
    written = out.read_text(encoding="utf-8")
    for c in deck.values():
        for lang in ("ja", "en", "both"):
            written += repr(note_fields(c, lang))
    assert not re.search(r"exercises/|\.ipynb|\.py\b|cards/|grader/", written)


# --- night mode -------------------------------------------------------------------------------------------------
def _luminance(hex_colour: str) -> float:
    """WCAG 2.x relative luminance of #rrggbb."""
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _rules() -> dict[str, dict[str, str]]:
    rules = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", CSS):
        props = dict((k.strip(), v.strip()) for k, v in re.findall(r"([a-z-]+)\s*:\s*([^;]+);?", body))
        for selector in selectors.split(","):
            rules.setdefault(selector.strip(), {}).update(props)
    return rules


def test_contrast_formula_matches_the_wcag_reference_values():
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)      # the WCAG "just fails" grey


@pytest.mark.parametrize("cls", [".term-other", ".exercise", ".cloze", ".cue", "summary"])
def test_secondary_text_has_at_least_4_5_to_1_contrast_day_and_night(cls):
    """Computed from the deck's CSS: the colour of `cls` against the card background, in day and in night mode."""
    rules = _rules()
    day_bg, night_bg = rules[".card"]["background"], rules[".nightMode.card"]["background"]
    assert contrast(rules[cls]["color"], day_bg) >= 4.5, cls
    assert contrast(rules[f".nightMode {cls}"]["color"], night_bg) >= 4.5, cls
