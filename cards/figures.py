"""Figures for the deck, drawn with matplotlib (Agg) and numpy; never torch.

`FIGURES` maps a figure name (what a concept's `figure:` field says) to the function that draws it. Each is drawn
once per language: Japanese labels for the Japanese side, in IPAexGothic from the pinned `matplotlib-fontja` package
(the kit's own setup installs it, so every build has the same glyphs), English labels in matplotlib's DejaVu Sans.
The module imports matplotlib only inside `draw`, so cards.data can check figure names without paying for it.

Legible on a phone: a card is about 360 CSS px wide there, and the image is scaled to that width. Figures are
WIDTH inches wide at DPI 200 (twice the first edition's 100) and no text is under MIN_POINTS, which comes out at
12 px or more on a 360 px screen (tests/test_cards_figures.py checks every text on every figure). The background is
opaque white, so the figures read the same in Anki's night mode.

Output is reproducible: fixed data, fixed size and dpi, default style with only our font added, and PNG metadata
without the "Software" entry (matplotlib writes no timestamp into PNGs), so the same code, matplotlib and font give
the same bytes.
"""
from __future__ import annotations

import functools
import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np      # imported where used: cards.data reads FIGURES, and `llmstudy review` starts fast

MEDIA_PREFIX = "llmstudy-w1-"     # Anki keeps all media in one folder per profile: keep our names apart
DPI = 200
WIDTH = 5.0                       # inches: 1000 px at DPI
PHONE_PX = 360                    # a phone's card width in CSS px, which the image is scaled down to
MIN_POINTS = 2.4 * WIDTH          # 12 pt: a text of MIN_POINTS is 12 CSS px tall at PHONE_PX (pt * 360 / (72 * WIDTH))
JA_FONT = "IPAexGothic"           # shipped by matplotlib-fontja==1.1.0 (pinned in pyproject.toml)
LANGS = ("ja", "en")

# One small, fixed next-token distribution shared by the decoding figures.
TOKENS = ("cake", "pie", "bread", "tea", "soup", "rice", "fish", "jam", "salt", "ink")
LOGITS = (3.0, 2.4, 2.0, 1.5, 1.1, 0.8, 0.4, 0.1, -0.4, -1.0)
TOP_K, TOP_P = 6, 0.75            # the decoding figure's settings; the cards quote its numbers


def media_name(figure: str, lang: str) -> str:
    """The media file name a figure has inside the deck, e.g. 'llmstudy-w1-positional-encoding-ja.png'."""
    return f"{MEDIA_PREFIX}{figure}-{lang}.png"


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """logits: [V] -> probabilities [V]. Subtract the max first so exp() cannot overflow."""
    import numpy as np
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def sinusoidal_positional_encoding(n_positions: int, d_model: int) -> np.ndarray:
    """[n_positions, d_model]: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same)
    (Vaswani et al. 2017, §3.5)."""
    import numpy as np
    pos = np.arange(n_positions)[:, None]                                   # [P, 1]
    inv_freq = 1.0 / 10000 ** (np.arange(0, d_model, 2) / d_model)          # [D/2]
    angles = pos * inv_freq[None, :]                                        # [P, D/2]
    pe = np.empty((n_positions, d_model))
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles)
    return pe


def top_k_then_top_p(probs: np.ndarray, k: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """probs: [V] sorted in descending order -> (kept by top-k, kept by both) as bool masks [V].

    The order transformers applies them (temperature, then top-k, then top-p): top-p sees only the k survivors,
    renormalised, and keeps the smallest prefix whose mass reaches p (the token that crosses p stays in).
    """
    by_k, _, renormalised_before = cumulative_masses(probs, k)
    return by_k, by_k & (renormalised_before < p)


def cumulative_masses(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probs: [V] sorted descending -> (kept by top-k [V] bool, raw mass before each token [V], mass before each
    token among the top-k survivors renormalised to sum to 1 [V], NaN outside the top k)."""
    import numpy as np
    probs = np.asarray(probs, dtype=np.float64)
    by_k = np.arange(len(probs)) < k
    raw_before = np.cumsum(probs) - probs
    renormalised = np.where(by_k, probs, 0.0) / probs[by_k].sum()
    renormalised_before = np.where(by_k, np.cumsum(renormalised) - renormalised, np.nan)
    return by_k, raw_before, renormalised_before


# --- the figures ------------------------------------------------------------------------------------------------
# Every figure function takes (fig, lang) and writes its labels in that language. Few words: the card says the rest.
GREEN, ORANGE, GREY, RED, BLUE = "#2E8B57", "#E1A23B", "#BBBBBB", "#C44E52", "#4C72B0"
DARK_GREY = "#6E6E6E"       # for text and thin lines: 5:1 against white, where GREY (bars only) is 1.9:1


def _softmax_temperature(fig, lang: str) -> None:
    import numpy as np
    ja = lang == "ja"
    ax = fig.subplots()
    x = np.arange(len(TOKENS))
    for t, style in ((0.5, "o-"), (1.0, "s--"), (2.0, "^:")):
        ax.plot(x, softmax(LOGITS, t), style, label=f"T = {t:g}", linewidth=2)
    ax.set_xticks(x, TOKENS, rotation=60)
    ax.set_ylabel("確率" if ja else "probability")
    ax.legend()
    ax.set_title("T が低いと鋭く、高いと平らに" if ja else "Low T sharpens, high T flattens")


def _top_k_top_p(fig, lang: str) -> None:
    import numpy as np
    ja = lang == "ja"
    probs = softmax(LOGITS)
    by_k, kept = top_k_then_top_p(probs, TOP_K, TOP_P)
    _, raw_before, renorm_before = cumulative_masses(probs, TOP_K)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.3))
    x = np.arange(len(TOKENS))
    top.bar(x, probs, color=np.where(kept, GREEN, np.where(by_k, ORANGE, GREY)))
    top.axvline(TOP_K - 0.5, color="black", linestyle="--")
    top.set_ylabel("確率" if ja else "probability")
    top.legend(handles=[_patch(GREEN, "残る" if ja else "kept"),
                        _patch(ORANGE, "top-p で切る" if ja else "cut by top-p"),
                        _patch(GREY, "top-k で切る" if ja else "cut by top-k")])
    top.set_title(f"top-k (k={TOP_K}) → top-p (p={TOP_P:g})")

    bottom.step(x, raw_before, where="mid", color=DARK_GREY, linewidth=2, label="元の分布" if ja else "raw")
    bottom.plot(x[by_k], renorm_before[by_k], "o-", color=BLUE, linewidth=2,
                label="top-k 後に正規化" if ja else "renormalised")
    bottom.axhline(TOP_P, color=RED, linestyle=":")
    bottom.text(len(TOKENS) - 0.5, TOP_P + 0.03, f"p = {TOP_P:g}", color=RED, ha="right")
    tea = TOKENS.index("tea")
    for value, color in ((raw_before[tea], DARK_GREY), (renorm_before[tea], BLUE)):
        bottom.annotate(f"{value:.3f}", (tea, value), xytext=(tea + 0.6, value - 0.22), color=color,
                        arrowprops=dict(arrowstyle="->", color=color))
    bottom.set_ylabel("手前までの累積" if ja else "mass before")
    bottom.set_ylim(0, 1.05)
    bottom.set_xticks(x, TOKENS, rotation=60)
    bottom.legend(loc="lower right")


def _positional_encoding(fig, lang: str) -> None:
    ja = lang == "ja"
    d_model, positions = 128, 64
    pe = sinusoidal_positional_encoding(positions, d_model)           # [64, 128]
    axes = fig.subplots(1, 2, sharey=True)
    for ax, columns, name in ((axes[0], pe[:, 0::2], "sin (2i)"), (axes[1], pe[:, 1::2], "cos (2i+1)")):
        image = ax.imshow(columns, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("i (0–63)")
    axes[0].set_ylabel("位置" if ja else "position")
    bar = fig.colorbar(image, ax=axes)
    bar.set_label("PE の値" if ja else "PE value")
    fig.suptitle(f"d_model = {d_model}")


def _project_lifecycle(fig, lang: str) -> None:
    ja = lang == "ja"
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 12)
    stages = (("Scope", "タスクを決める" if ja else "define the task", 11.0),
              ("Select", "モデルを選ぶ" if ja else "choose a model", 9.0),
              ("Application integration", "推論の最適化" if ja else "optimise inference", 1.0))
    for title, text, y in stages:
        _box(ax, 5, y, 9.4, 1.6, f"{title}\n{text}", "#DCE8F5")
    ax.add_patch(_rect(0.3, 2.2, 9.4, 5.8, "#F6F0DC"))
    ax.text(5, 7.45, "Adapt and align", ha="center", va="center")
    steps = ("プロンプトエンジニアリング", "fine-tuning", "RLHF", "評価") if ja else \
            ("prompt engineering", "fine-tuning", "RLHF", "evaluate")
    for n, text in enumerate(steps):
        _box(ax, 4.2, 6.6 - 1.1 * n, 6.6, 0.85, text, "#FFFFFF")
    ax.annotate("", xy=(7.9, 6.6), xytext=(7.9, 3.3),
                arrowprops=dict(arrowstyle="->", color=RED, linewidth=2, connectionstyle="arc3,rad=0.4"))
    ax.text(9.25, 4.95, "反復" if ja else "iterate", color=RED, rotation=90, va="center", ha="center")
    for y0, y1 in ((10.2, 9.8), (8.2, 8.0), (2.2, 1.8)):
        ax.annotate("", xy=(5, y1), xytext=(5, y0), arrowprops=dict(arrowstyle="->"))


def _model_families(fig, lang: str) -> None:
    ja = lang == "ja"
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 9)
    rows = (("Encoder-only", [("Encoder", "#DCE8F5")], "分類" if ja else "classification", "BERT"),
            ("Encoder-decoder", [("Encoder", "#DCE8F5"), ("Decoder", "#F6DCDC")],
             "翻訳・要約" if ja else "translation, summaries", "BART, T5"),
            ("Decoder-only", [("Decoder", "#F6DCDC")], "テキスト生成" if ja else "text generation",
             "GPT, LLaMA"))
    for n, (title, blocks, use, examples) in enumerate(rows):
        y = 7.6 - 3.0 * n
        ax.text(0.2, y + 0.9, title, va="center")
        width = 4.4 / len(blocks)
        for i, (name, color) in enumerate(blocks):
            _box(ax, 0.2 + width * (i + 0.5), y - 0.3, width - 0.2, 1.0, name, color)
        ax.text(5.0, y - 0.3, f"{use}\n{examples}", va="center")


def _box(ax, x, y, w, h, text, color) -> None:
    ax.add_patch(_rect(x - w / 2, y - h / 2, w, h, color))
    ax.text(x, y, text, ha="center", va="center")


def _rect(x, y, w, h, color):
    from matplotlib.patches import FancyBboxPatch
    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.1", facecolor=color,
                          edgecolor="#333333")


def _patch(color, label):
    from matplotlib.patches import Patch
    return Patch(color=color, label=label)


FIGURES: dict[str, Callable] = {
    "softmax-temperature": _softmax_temperature,
    "top-k-top-p": _top_k_top_p,
    "positional-encoding": _positional_encoding,
    "project-lifecycle": _project_lifecycle,
    "model-families": _model_families,
}
HEIGHT = {"top-k-top-p": 6.0, "project-lifecycle": 6.0, "model-families": 4.6}      # inches; default DEFAULT_HEIGHT
DEFAULT_HEIGHT = 3.9


class FigureFontMissing(RuntimeError):
    """The pinned Japanese font package is not installed; the message says how to install it."""


def japanese_font_path() -> str:
    """IPAexGothic's file inside the matplotlib-fontja package, found without importing the package (its import
    changes matplotlib's global settings)."""
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        raise FigureFontMissing("the Japanese figure font is missing: pip install matplotlib-fontja==1.1.0 "
                                "(make setup installs it)")
    return str(Path(spec.submodule_search_locations[0]) / "fonts" / "ipaexg.ttf")


@functools.cache
def render(name: str, lang: str) -> bytes:
    """The PNG bytes of figure `name` in `lang`, drawn once per process (a figure depends on nothing but this code)."""
    return draw(name, lang)


def figure(name: str, lang: str):
    """The matplotlib Figure of `name` in `lang`, laid out; draw() saves it. Call inside style() so the fonts and
    defaults apply."""
    from matplotlib.figure import Figure     # a bare Figure uses the Agg canvas and touches no pyplot state
    fig = Figure(figsize=(WIDTH, HEIGHT.get(name, DEFAULT_HEIGHT)), dpi=DPI, layout="constrained",
                 facecolor="white")
    FIGURES[name](fig, lang)
    return fig


def style(lang: str):
    """matplotlib's defaults (whatever the process set before) with our font and text sizes, as a context manager."""
    import matplotlib
    from matplotlib import font_manager
    params = {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}
    size = MIN_POINTS
    params |= {"font.size": size, "axes.titlesize": size + 1, "axes.labelsize": size, "xtick.labelsize": size,
               "ytick.labelsize": size, "legend.fontsize": size, "figure.titlesize": size + 1}
    if lang == "ja":
        path = japanese_font_path()
        if path not in {f.fname for f in font_manager.fontManager.ttflist}:
            font_manager.fontManager.addfont(path)
        params["font.family"] = [JA_FONT, "DejaVu Sans"]    # DejaVu for the few symbols IPAexGothic lacks
    return matplotlib.rc_context(params)


def draw(name: str, lang: str) -> bytes:
    """Draw figure `name` in `lang` to PNG bytes; the same bytes for the same code, matplotlib and font."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    with style(lang):
        fig = figure(name, lang)
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def render_all(names, directory: Path, lang: str) -> list[Path]:
    """Write each named figure in `lang` to `directory`/media_name(name, lang); returns the paths in order given."""
    directory = Path(directory)
    paths = []
    for name in names:
        path = directory / media_name(name, lang)
        path.write_bytes(render(name, lang))
        paths.append(path)
    return paths
