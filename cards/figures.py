"""Figures for the deck, drawn with matplotlib (Agg) and numpy; never torch.

`FIGURES` maps a figure name (what a concept's `figure:` field says) to the function that draws it. The module imports
matplotlib only inside `render`, so cards.data can check figure names without paying for matplotlib.

Output is reproducible: fixed data, fixed size and dpi, default style, and PNG metadata without the "Software" entry
(matplotlib writes no timestamp into PNGs), so the same code and matplotlib version give the same bytes.
Labels are in English only: the bundled DejaVu Sans has no Japanese glyphs, and the cards say the rest in both languages.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np      # imported where used: cards.data reads FIGURES, and `llmstudy review` starts fast

MEDIA_PREFIX = "llmstudy-w1-"     # Anki keeps all media in one folder per profile: keep our names apart
DPI = 100
SIZE = (7.0, 3.6)                 # inches: 700 x 360 px, readable on a phone

# One small, fixed next-token distribution shared by the decoding figures.
TOKENS = ("cake", "pie", "bread", "tea", "soup", "rice", "fish", "jam", "salt", "ink")
LOGITS = (3.0, 2.4, 2.0, 1.5, 1.1, 0.8, 0.4, 0.1, -0.4, -1.0)


def media_name(figure: str) -> str:
    """The media file name a figure has inside the deck, e.g. 'llmstudy-w1-positional-encoding.png'."""
    return f"{MEDIA_PREFIX}{figure}.png"


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
    import numpy as np
    by_k = np.arange(len(probs)) < k
    renormalised = np.where(by_k, probs, 0.0) / probs[by_k].sum()
    mass_before = np.cumsum(renormalised) - renormalised
    return by_k, by_k & (mass_before < p)


# --- the figures ------------------------------------------------------------------------------------------------
def _softmax_temperature(fig) -> None:
    import numpy as np
    temperatures = (0.5, 1.0, 2.0)
    axes = fig.subplots(1, len(temperatures), sharey=True)
    x = np.arange(len(TOKENS))
    for ax, t in zip(axes, temperatures):
        ax.bar(x, softmax(LOGITS, t), color="#4C72B0")
        ax.set_title(f"temperature = {t:g}")
        ax.set_xticks(x, TOKENS, rotation=60, fontsize=8)
    axes[0].set_ylabel("probability")
    fig.suptitle("Softmax of the same logits: low temperature sharpens, high temperature flattens")


def _top_k_top_p(fig) -> None:
    import numpy as np
    k, p = 6, 0.75
    probs = softmax(LOGITS)
    by_k, kept = top_k_then_top_p(probs, k, p)
    colors = np.where(kept, "#2E8B57", np.where(by_k, "#E1A23B", "#BBBBBB"))
    ax = fig.subplots()
    x = np.arange(len(TOKENS))
    ax.bar(x, probs, color=colors)
    ax.set_xticks(x, TOKENS)
    ax.set_ylabel("probability (temperature 1)")
    top = probs.max()
    ax.axvline(k - 0.5, color="black", linestyle="--")
    ax.text(k - 0.45, top * 0.45, f"top-k cut\n(k={k})", fontsize=9)
    last = int(np.flatnonzero(kept)[-1])
    ax.axvline(last + 0.5, color="#C44E52", linestyle=":")
    ax.text(last + 0.55, top * 0.6, f"top-p cut (p={p:g}\nof the renormalised\ntop-{k} mass)", fontsize=9,
            color="#C44E52")
    ax.legend(handles=[_patch("#2E8B57", "kept: passes top-k, then top-p"),
                       _patch("#E1A23B", "in the top k, cut by top-p"),
                       _patch("#BBBBBB", "cut by top-k")], fontsize=8, loc="upper center")
    ax.set_title("Top-k first, then top-p on what is left: only green tokens can be sampled")


def _positional_encoding(fig) -> None:
    import numpy as np
    pe = sinusoidal_positional_encoding(64, 128)                        # [64, 128]
    grouped = np.concatenate([pe[:, 0::2], pe[:, 1::2]], axis=1)        # sin columns, then cos: no stripes
    ax = fig.subplots()
    image = ax.imshow(grouped, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("frequency index i (left half: sin dimensions 2i, right half: cos dimensions 2i+1)")
    ax.set_ylabel("position in the sequence")
    ax.set_title("Sinusoidal positional encoding: each position gets a unique pattern")
    fig.colorbar(image, ax=ax)


def _project_lifecycle(fig) -> None:
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5)
    for x, w, text in ((1.0, 1.8, "Scope\n\ndefine the\nuse case"),
                       (3.15, 1.9, "Select\n\nuse an existing\nmodel, or\npretrain\nyour own"),
                       (9.95, 1.9, "Application\nintegration\n\noptimize and\ndeploy for\ninference;\n"
                                   "build LLM-\npowered apps")):
        _box(ax, x, 2.5, w, 3.6, text, "#DCE8F5", fontsize=9)
    ax.add_patch(_rect(4.5, 0.45, 4.2, 4.2, "#F6F0DC"))
    ax.text(6.6, 4.35, "Adapt and align model", ha="center", va="center", fontsize=10, weight="bold")
    for y, text in ((3.6, "Prompt engineering"), (2.7, "Fine-tuning"),
                    (1.75, "Align with human feedback\n(RLHF)"), (0.9, "Evaluate")):
        _box(ax, 6.3, y, 3.0, 0.65, text, "#FFFFFF", fontsize=9)
    ax.annotate("", xy=(7.9, 3.6), xytext=(7.9, 0.9),
                arrowprops=dict(arrowstyle="->", color="#C44E52", connectionstyle="arc3,rad=0.4"))
    ax.text(8.45, 2.25, "iterate", color="#C44E52", fontsize=9, rotation=90, va="center")
    for x0, x1 in ((1.9, 2.2), (4.1, 4.5), (8.7, 9.0)):
        ax.annotate("", xy=(x1, 2.5), xytext=(x0, 2.5), arrowprops=dict(arrowstyle="->"))
    ax.set_title("Generative AI project lifecycle")


def _model_families(fig) -> None:
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(0, 9)
    ax.set_ylim(1.4, 5)
    columns = [
        (1.5, "Encoder-only", [("Encoder", "#DCE8F5")],
         "understands the whole input:\nclassification, sentiment,\nnamed entities\n\ne.g. BERT, RoBERTa"),
        (4.5, "Encoder-decoder", [("Encoder", "#DCE8F5"), ("Decoder", "#F6DCDC")],
         "maps one sequence to another:\ntranslation, summarisation\n\ne.g. BART, T5, FLAN-T5"),
        (7.5, "Decoder-only", [("Decoder", "#F6DCDC")],
         "predicts the next token:\ngeneral text generation\n\ne.g. GPT, LLaMA, BLOOM,\nJurassic"),
    ]
    for x, title, blocks, text in columns:
        ax.text(x, 4.7, title, ha="center", fontsize=11, weight="bold")
        width = 2.4 / len(blocks)
        for i, (name, color) in enumerate(blocks):
            bx = x - 1.2 + width * (i + 0.5)
            _box(ax, bx, 3.7, width - 0.15, 1.0, name, color)
        if len(blocks) == 2:
            ax.annotate("", xy=(x + 0.1, 3.7), xytext=(x - 0.1, 3.7), arrowprops=dict(arrowstyle="->"))
        ax.text(x, 2.9, text, ha="center", va="top", fontsize=9)
    ax.set_title("Transformer model families")


def _box(ax, x, y, w, h, text, color, fontsize=10) -> None:
    ax.add_patch(_rect(x - w / 2, y - h / 2, w, h, color))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


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


@functools.cache
def render(name: str) -> bytes:
    """The PNG bytes of figure `name`, drawn once per process (a figure depends on nothing but this code)."""
    return draw(name)


def draw(name: str) -> bytes:
    """Draw figure `name` to PNG bytes; the same bytes for the same code and matplotlib version."""
    import matplotlib
    from matplotlib.figure import Figure     # a bare Figure uses the Agg canvas and touches no pyplot state

    with matplotlib.rc_context({k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}):
        fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
        FIGURES[name](fig)
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def render_all(names, directory: Path) -> list[Path]:
    """Write each named figure to `directory`/media_name(name); returns the paths in the order given."""
    directory = Path(directory)
    paths = []
    for name in names:
        path = directory / media_name(name)
        path.write_bytes(render(name))
        paths.append(path)
    return paths
