"""Grader side: reference results computed once per machine, not once per worker (or per `llmstudy check`).

    @functools.cache                      # and once per process in memory
    @per_machine
    def _reference(prompts, max_new_tokens, eos_token_id) -> torch.Tensor: ...   # transformers' generate() output

joblib.Memory keeps the results on disk in the model cache (models.cache_dir()/references/), keyed by the function's
code and its arguments, and here also by everything that can change a bit of them: the model file's sha256, the
torch and transformers versions and torch's thread count, which name the folder. On one thread with the same versions
the CPU kernels are deterministic, so a cached result equals a recomputed one bit for bit (tests/test_reference_cache.py
checks it on the real generate() oracle). joblib writes each result atomically, so workers racing on one machine are
safe; a result it can't read is recomputed.

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
