"""The one list of exercises. Everything else (notebooks, solutions, graders, CLI) derives from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXERCISES_DIR = ROOT / "exercises"
SOLUTIONS_DIR = ROOT / "solutions"
GRADER_TESTS_DIR = ROOT / "grader" / "tests"
# A learner's release (`llmstudy release`) has no grader/tests/: only the public tests, in the learner package.
PUBLIC_TESTS_DIR = Path(__file__).resolve().parent / "public_tests"


@dataclass(frozen=True)
class Exercise:
    id: str                       # e.g. "attention"; solutions/<id>.py, grader/tests/test_<id>.py
    notebook: str                 # file name in exercises/, e.g. "02_attention.ipynb"
    title: str
    functions: tuple[str, ...]    # the learner-facing API, in notebook order

    @property
    def stem(self) -> str:
        return Path(self.notebook).stem

    @property
    def notebook_path(self) -> Path:
        return EXERCISES_DIR / self.notebook

    @property
    def solution_path(self) -> Path:
        return SOLUTIONS_DIR / f"{self.id}.py"

    @property
    def grader_path(self) -> Path:
        """The hidden graders; in a learner's release, which has none, the public tests it ships instead."""
        hidden = GRADER_TESTS_DIR / f"test_{self.id}.py"
        return hidden if hidden.exists() else PUBLIC_TESTS_DIR / f"test_{self.id}.py"


EXERCISES: tuple[Exercise, ...] = (
    Exercise("positional_encoding", "01_positional_encoding.ipynb", "Sinusoidal positional encoding",
             ("positional_encoding",)),
    Exercise("attention", "02_attention.ipynb", "Scaled dot-product and multi-head attention",
             ("softmax", "causal_mask", "scaled_dot_product_attention", "multi_head_attention")),
    Exercise("sampling", "03_sampling.ipynb", "Greedy, temperature, top-k and top-p sampling",
             ("apply_temperature", "top_k_filter", "top_p_filter", "greedy_next_token", "sample_next_token")),
    Exercise("generation", "04_generation.ipynb", "The generation loop",
             ("generate",)),
    Exercise("prompting", "05_prompting.ipynb", "Zero-, one- and few-shot prompts",
             ("zero_shot_prompt", "few_shot_prompt", "fit_few_shot_prompt")),
)


def by_id(exercise_id: str) -> Exercise:
    for ex in EXERCISES:
        if ex.id == exercise_id:
            return ex
    known = ", ".join(e.id for e in EXERCISES)
    raise KeyError(f"unknown exercise '{exercise_id}'; known exercises: {known}")


def for_file(path: str | Path) -> Exercise:
    """The exercise a submitted file belongs to: '02_attention.ipynb' or '02_attention.py'."""
    stem = Path(path).stem
    for ex in EXERCISES:
        if ex.stem == stem:
            return ex
    names = ", ".join(e.stem + ".ipynb" for e in EXERCISES)
    raise KeyError(f"'{Path(path).name}' is not an exercise file; name it like one of: {names} (or .py)")
