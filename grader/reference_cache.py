"""Grader side: reference results computed once per machine, not once per worker (or per `llmstudy check`).

    @functools.cache                      # and once per process in memory
    @per_machine
    def _reference(prompts, max_new_tokens, eos_token_id) -> torch.Tensor: ...   # transformers' generate() output

    warm_memo()                           # a grading worker's start: the reference's forward passes, from disk

joblib.Memory keeps the results on disk in the model cache (models.cache_dir()/references/), keyed by the function's
code and its arguments, and here also by everything that can change a bit of them: the model file's sha256, the
torch and transformers versions and torch's thread count, which name the folder. On one thread with the same versions
the CPU kernels are deterministic, so a cached result equals a recomputed one bit for bit (tests/test_reference_cache.py
checks it on the real generate() oracle). joblib writes each result atomically, so workers racing on one machine are
safe; a result it can't read is recomputed. warm_memo() keeps, in the same folder, the forward passes that grading
the reference solution of generation makes (safetensors, no pickle), so that no worker computes the greedy steps of
correct submissions again.

Trust: the folder is as trusted as the model cache beside it. The sandbox never shows it to learner code (only the
tokenizer folders of the cache are bound into a child), so official grading can't be steered through it; code that
runs as the instructor's own user (plain `nbgrader autograde`, which runs learner code in its kernel) could rewrite
it, as it could rewrite the cached weights.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

SUBDIR = "references"


@functools.cache
def _model_digest() -> str:
    """sha256 of the SmolLM2 file the references come from (the GGUF the fp32 cache is built from), or 'none'."""
    from llmstudy import models
    info = next(i for i in models.available() if i.name == "smollm2")
    if info.files is None or not Path(info.files).is_file():
        return "none"
    digest = hashlib.sha256()
    with open(info.files, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def location_key() -> str:
    """What the results depend on besides the function and its arguments: the model file, torch, transformers and
    the thread count."""
    import torch
    import transformers
    return f"smollm2-{_model_digest()}-torch{torch.__version__}-transformers{transformers.__version__}-" \
           f"threads{torch.get_num_threads()}"


def location() -> Path:
    """This machine's folder for the current key."""
    from llmstudy import models
    return models.cache_dir() / SUBDIR / location_key()


def per_machine(fn):
    """fn, memoised on disk for this machine (see the module docstring); fn's arguments must be plain values."""
    import joblib

    @functools.wraps(fn)
    def cached(*args, **kwargs):
        memory = joblib.Memory(location(), verbose=0)
        return memory.cache(fn)(*args, **kwargs)
    return cached


# --- the forward passes of the reference's own grade, for the worker's memo -------------------------------------------
MEMO_EXERCISE = "generation"          # the one exercise whose graders make the learner's code call the model


def memo_file() -> Path:
    """Where this machine keeps them: beside the references, named by every grader source and the reference
    solution, since any change there can change which forward passes a grade asks for."""
    from llmstudy.catalog import by_id
    digest = hashlib.sha256()
    for path in [*sorted(Path(__file__).parent.rglob("*.py")), by_id(MEMO_EXERCISE).solution_path]:
        digest.update(path.read_bytes())
    return location() / f"forward-memo-{digest.hexdigest()[:16]}.safetensors"


def warm_memo(build: bool = True) -> str:
    """Fill the worker's forward memo (grader/forward_memo.PER_WORKER) with the forward passes that grading the
    reference solution of generation makes: the greedy steps every correct submission asks for. Computed once per
    machine (the reference's grade, in this process, on the grader's own model server) and kept in memo_file();
    later workers load them in ~40 ms instead of computing them in their first correct submission (~2 s each).
    The keys are computation paths (grader/forward_memo.py): a submission whose calls differ simply misses them,
    and the origin key of each path, with this folder's key, ties every entry to the model file, the versions and
    the thread count, so a loaded entry is bit for bit what the call would compute. "loaded", "built" or "failed:
    ..." (the memo then fills as before, submission by submission). A worker forked from a process that loaded
    the file (grader.worker_preload) has it already: "loaded" at once. Without `build`, only loaded: "missing" if
    this machine has not computed it yet."""
    from llmstudy.grader.forward_memo import PER_WORKER as memo
    try:
        path = memo_file()
        if path in memo.loaded:
            return "loaded"
        if path.is_file():
            try:
                memo.load(path)
                return "loaded"
            except Exception:  # noqa: BLE001 - unreadable (a torn copy, another safetensors): computed again below
                pass
        if not build:
            return "missing"
        from llmstudy.catalog import by_id
        from llmstudy.grader import runner
        from llmstudy.grader.extract import load_namespace
        from llmstudy.grader.submission import InProcessSubmission

        before = set(memo.keys())
        sub = InProcessSubmission(load_namespace(by_id(MEMO_EXERCISE).solution_path), MEMO_EXERCISE)   # its server
        result = runner.grade(MEMO_EXERCISE, sub)                                               # uses that memo
        if result.score != result.max_score:
            return f"failed: the reference scored {result.score:g}/{result.max_score:g}"
        memo.save(path, [k for k in memo.keys() if k not in before])
        return "built"
    except Exception as exc:  # noqa: BLE001 - a speed-up only; grading goes on without it
        return f"failed: {type(exc).__name__}: {exc}"
