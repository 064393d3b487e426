"""The deck's figures: Japanese labels on the Japanese side, legible at a phone's width, honest labels."""
from __future__ import annotations

import re
import struct

import pytest

from llmstudy.cards import figures

FIRST_EDITION_DPI = 100
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def texts(name: str, lang: str):
    """Every visible, non-empty text on the laid-out figure (titles, labels, ticks, legends, annotations)."""
    from matplotlib.text import Text
    with figures.style(lang):
        fig = figures.figure(name, lang)
        fig.canvas.draw()            # lays out ticks, so tick labels exist and have their final text
        return fig, [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_every_text_is_at_least_12_css_px_on_a_360_px_phone(name):
    """The image is scaled to the card's width: a text of s points in a figure WIDTH inches wide is
    s / 72 * 360 / WIDTH CSS px tall on a 360 px phone."""
    for lang in figures.LANGS:
        fig, found = texts(name, lang)
        assert found, name
        for t in found:
            px = t.get_fontsize() / 72 * figures.PHONE_PX / fig.get_figwidth()
            assert px >= 12 - 1e-9, (name, lang, t.get_text(), px)       # 1e-9: float rounding of 12.0 exactly


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_figures_are_drawn_at_twice_the_first_editions_resolution(name):
    for lang in figures.LANGS:
        width, height = png_size(figures.render(name, lang))
        assert width == round(figures.WIDTH * figures.DPI) and figures.DPI >= 2 * FIRST_EDITION_DPI
        assert width >= 2 * figures.PHONE_PX        # at least 2 image px per CSS px on the phone


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_japanese_side_has_japanese_labels_in_the_bundled_font_and_the_english_side_none(name):
    from matplotlib import font_manager
    _, ja = texts(name, "ja")
    _, en = texts(name, "en")
    japanese = [t for t in ja if JAPANESE.search(t.get_text())]
    assert japanese, name
    for t in japanese:
        path = font_manager.findfont(t.get_fontproperties(), fallback_to_default=False)
        assert path == figures.japanese_font_path(), (t.get_text(), path)
    assert not [t.get_text() for t in en if JAPANESE.search(t.get_text())]


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")      # the DejaVu raster is meant to lack them
def test_japanese_glyphs_really_render_not_as_boxes():
    """A missing glyph draws as an empty box of the same width: render one label in IPAexGothic and in DejaVu Sans
    (which has no Japanese) and check the images differ."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    def raster(props) -> np.ndarray:
        fig = Figure(figsize=(2, 1), dpi=100)
        canvas = FigureCanvasAgg(fig)
        fig.text(0.1, 0.4, "確率", fontproperties=props, fontsize=20)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())

    with figures.style("ja"):
        bundled = raster(FontProperties(fname=figures.japanese_font_path()))
        fallback = raster(FontProperties(family="DejaVu Sans"))
    assert (bundled < 128).any() and not np.array_equal(bundled, fallback)


def test_positional_encoding_heat_map_states_d_model_and_labels_its_colour_bar():
    for lang, value_label in (("en", "PE value"), ("ja", "PE の値")):
        _, found = texts("positional-encoding", lang)
        shown = [t.get_text() for t in found]
        assert "d_model = 128" in shown and value_label in shown, shown
        assert not [s for s in shown if "frequency index" in s]
        assert shown.count("i (0–63)") == 2              # two panels, each i = 0..63: sin(2i) and cos(2i+1)


def test_top_k_top_p_figure_shows_raw_and_renormalised_mass_before_tea():
    probs = figures.softmax(figures.LOGITS)
    _, raw, renorm = figures.cumulative_masses(probs, figures.TOP_K)
    tea = figures.TOKENS.index("tea")
    for lang in figures.LANGS:
        _, found = texts("top-k-top-p", lang)
        shown = {t.get_text() for t in found}
        assert f"{raw[tea]:.3f}" in shown and f"{renorm[tea]:.3f}" in shown, shown
    assert renorm[tea] >= figures.TOP_P > raw[tea]        # why tea is cut: only renormalised mass reaches p


def test_cumulative_masses_renormalise_the_top_k_survivors():
    import numpy as np
    probs = figures.softmax(figures.LOGITS)
    by_k, raw, renorm = figures.cumulative_masses(probs, 3)
    assert by_k.tolist() == [True] * 3 + [False] * 7
    # float64 sums of at most ten terms: 1e-12 is far above their rounding error
    assert abs(raw[2] - probs[:2].sum()) < 1e-12
    assert abs(renorm[2] - probs[:2].sum() / probs[:3].sum()) < 1e-12 and np.isnan(renorm[3:]).all()


def test_figures_ignore_the_processs_matplotlib_settings():
    """draw() starts from matplotlib's defaults: a caller's rcParams (or matplotlib_fontja's import, which sets the
    global font) change no byte."""
    import matplotlib
    before = figures.draw("model-families", "en")
    with matplotlib.rc_context({"font.family": "serif", "font.size": 4, "lines.linewidth": 9}):
        assert figures.draw("model-families", "en") == before


@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_every_text_has_at_least_4_5_to_1_contrast_on_the_white_figure(name):
    from matplotlib.colors import to_hex
    from test_cards_content import contrast
    for lang in figures.LANGS:
        _, found = texts(name, lang)
        for t in found:
            assert contrast(to_hex(t.get_color()), "#ffffff") >= 4.5, (name, lang, t.get_text(), t.get_color())
