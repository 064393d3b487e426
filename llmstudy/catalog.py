"""The one list of exercises. Everything else (notebooks, solutions, graders, CLI) derives from it."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path


def package_folder(package: str) -> Path | None:
    """The folder of one of the kit's packages (llmstudy.exercises, llmstudy.solutions, ...), found through
    importlib.resources, so that a checkout and an installed wheel read the same files; None where it isn't installed
    (a learner's release has no llmstudy.solutions)."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        return None
    # A folder without __init__.py (exercises/, examples/) is a namespace package, whose files() is a MultiplexedPath
    # over its folders; ours have one, and joinpath(".") gives it as a pathlib.Path.
    return Path(root if isinstance(root, Path) else root.joinpath("."))


# The notebooks and their data; a learner's release keeps them beside its llmstudy/ folder, not inside it.
EXERCISES_DIR = package_folder("llmstudy.exercises") or Path(__file__).resolve().parent.parent / "exercises"
SOLUTIONS_DIR = package_folder("llmstudy.solutions")           # None in a learner's release
GRADER_TESTS_DIR = (package_folder("llmstudy.grader") or Path("/nonexistent")) / "tests"
EXAMPLE_CLASS_DIR = (package_folder("llmstudy.examples") or Path("/nonexistent")) / "class"
# A learner's release (`llmstudy release`) has no grader/tests/: only the public tests, in the learner package.
PUBLIC_TESTS_DIR = Path(__file__).resolve().parent / "public_tests"


@dataclass(frozen=True)
class Exercise:
    id: str                       # e.g. "attention"; solutions/<id>.py, grader/tests/test_<id>.py
    notebook: str                 # file name in exercises/, e.g. "02_attention.ipynb"
    title: str
    functions: tuple[str, ...]    # the learner-facing API, in notebook order
    # Core-seconds to grade a correct submission cold, sandboxed (bench/exercise_costs.py, 2-core VM). Only orders a
    # class's tasks: each student's files longest first, so the class ends with short tasks (grader.batch._submit).
    grading_cost: float

    @property
    def stem(self) -> str:
        return Path(self.notebook).stem

    @property
    def notebook_path(self) -> Path:
        return EXERCISES_DIR / self.notebook

    @property
    def solution_path(self) -> Path:
        if SOLUTIONS_DIR is None:
            raise FileNotFoundError("this install has no solutions (a learner's release); grade from the instructor's")
        return SOLUTIONS_DIR / f"{self.id}.py"

    @property
    def grader_path(self) -> Path:
        """The hidden graders; in a learner's release, which has none, the public tests it ships instead."""
        hidden = GRADER_TESTS_DIR / f"test_{self.id}.py"
        return hidden if hidden.exists() else PUBLIC_TESTS_DIR / f"test_{self.id}.py"


EXERCISES: tuple[Exercise, ...] = (
    Exercise("positional_encoding", "01_positional_encoding.ipynb", "Sinusoidal positional encoding",
             ("positional_encoding",), grading_cost=0.10),
    Exercise("attention", "02_attention.ipynb", "Scaled dot-product and multi-head attention",
             ("softmax", "causal_mask", "scaled_dot_product_attention", "multi_head_attention"), grading_cost=0.19),
    Exercise("sampling", "03_sampling.ipynb", "Greedy, temperature, top-k and top-p sampling",
             ("apply_temperature", "top_k_filter", "top_p_filter", "greedy_next_token", "sample_next_token"),
             grading_cost=0.16),
    Exercise("generation", "04_generation.ipynb", "The generation loop",
             ("generate",), grading_cost=1.76),
    Exercise("prompting", "05_prompting.ipynb", "Zero-, one- and few-shot prompts",
             ("zero_shot_prompt", "few_shot_prompt", "fit_few_shot_prompt"), grading_cost=0.11),
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
