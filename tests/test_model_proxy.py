"""The model proxy a learner's code gets, and the grader-side server behind it (grader/model_proxy.py,
grader/model_server.py): same logits as the model itself, a prefix cache that computes only new positions, and
one-line errors for malformed calls."""
from __future__ import annotations

import importlib.util

from pathlib import Path

import pytest
import torch

from llmstudy.grader.model_proxy import InProcessTransport, ModelProxy
from llmstudy.grader.model_server import ModelRequestError, ModelServer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def server():
    return ModelServer("cpu", memo=None)      # the prefix cache alone: these tests count its forward passes


@pytest.fixture
def proxy(server):
    return ModelProxy("smollm2", InProcessTransport(server))


def grader_generation():
    spec = importlib.util.spec_from_file_location("grader_generation", Path(__file__).parent.parent / "grader" / "tests" / "test_generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ids_of(smollm2, *prompts: str) -> torch.Tensor:
    return torch.tensor([smollm2[1](p)["input_ids"] for p in prompts])


def scratch(smollm2, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return smollm2[0](ids).logits


def test_a_naive_loop_through_the_cache_stays_inside_the_graders_tolerances(smollm2, proxy, server):
    """Cached and from-scratch logits differ by up to ~1e-4 (another summation order, fp32; by CPU: worst 1e-5
    measured on an AMD EPYC, 9.6e-5 on an Intel Xeon). Two greedy logits that each move by d can swap only if their
    margin is below 2d, and the graders compare greedy tokens only where the top-2 margin exceeds MIN_MARGIN (1e-3):
    bound d by MIN_MARGIN / 4 (2x headroom). Support checks read the same cache the learner's calls filled
    (identical numbers), and where they didn't, d divided by the lowest temperature any support test uses (0.5)
    must stay below SUPPORT_TOL / 2, since a softmax mass moves by up to twice its logits' move."""
    grader_module = grader_generation()
    ids = ids_of(smollm2, "I opened the door and saw", "A cat is an animal that")
    worst = 0.0
    for _ in range(6):                                                # the naive loop: the whole sequence each step
        got = proxy(ids).logits                                       # [B, L, V]
        worst = max(worst, float((got - scratch(smollm2, ids)).abs().max()))
        ids = torch.cat([ids, got[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert worst < grader_module.MIN_MARGIN / 4 and worst / 0.5 < grader_module.SUPPORT_TOL / 2, worst
    # 6 calls over 2 rows: the prompt once, then one new position per row per step.
    assert server.stats.runs == 6 and server.stats.positions_computed == 2 * 6 + 2 * 5


def test_kv_cache_style_calls_get_the_same_logits(smollm2, proxy):
    ids = ids_of(smollm2, "The capital of France is")
    out = proxy(ids, use_cache=True)
    step = out.logits[:, -1].argmax(-1, keepdim=True)
    nxt = proxy(step, past_key_values=out.past_key_values, use_cache=True)
    assert nxt.logits.shape[1] == 1 and nxt.past_key_values.get_seq_length() == ids.shape[1] + 1
    want = scratch(smollm2, torch.cat([ids, step], dim=1))[:, -1]
    # Same bound as above: cached vs from scratch, d / 0.5 < SUPPORT_TOL / 2.
    torch.testing.assert_close(nxt.logits[:, -1], want, atol=grader_generation().SUPPORT_TOL / 4, rtol=0)   # the bound explained above


def test_edited_ids_and_branches_are_never_served_stale(smollm2, proxy, server):
    ids = ids_of(smollm2, "He bought a new car because")
    proxy(ids)
    edited = ids.clone()
    edited[0, 2] = (edited[0, 2] + 1) % 1000
    torch.testing.assert_close(proxy(edited).logits, scratch(smollm2, edited), atol=grader_generation().SUPPORT_TOL / 4, rtol=0)   # the bound explained above
    branch = torch.cat([ids[:, :4], torch.tensor([[42, 43]])], dim=1)           # shares 4 positions, then differs
    torch.testing.assert_close(proxy(branch).logits, scratch(smollm2, branch), atol=grader_generation().SUPPORT_TOL / 4, rtol=0)   # the bound explained above


def test_identical_rows_are_computed_once(smollm2, proxy, server):
    ids = ids_of(smollm2, "He bought a").repeat(64, 1)
    logits = proxy(ids).logits
    assert logits.shape[0] == 64 and server.stats.positions_computed == ids.shape[1]
    assert torch.equal(logits[0], logits[63])


def test_a_returned_tensor_is_the_learners_own(smollm2, proxy):
    ids = ids_of(smollm2, "The capital of France is")
    first = proxy(ids).logits
    first.zero_()                                                     # the learner scribbles on it
    assert float(proxy(ids).logits.abs().max()) > 0


def test_the_proxy_offers_no_route_to_decoding_or_weights(proxy):
    for name in ("generate", "lm_head", "model", "state_dict", "parameters"):
        with pytest.raises(AttributeError, match="not available"):
            getattr(proxy, name)
    with pytest.raises(AttributeError):
        proxy.forward = print
    assert proxy.config.vocab_size == 49152 and proxy.device == torch.device("cpu")


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1, 2, 3]), r"shape \[B, L\]"),
    (torch.tensor([[1.0, 2.0]]), "token ids"),
    (torch.tensor([[10 ** 7]]), "outside the vocabulary"),
    ([[1, 2, 3]], "LongTensor"),
])
def test_malformed_calls_get_a_message_that_says_what_to_pass(proxy, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        proxy(bad)


def test_server_refuses_unknown_models_and_forged_handles(server):
    with pytest.raises(ModelRequestError, match="can't be called"):
        server.forward("minilm", torch.tensor([[1, 2]]))
    with pytest.raises(ModelRequestError, match="past_key_values"):
        server.forward("smollm2", torch.tensor([[1, 2]]), past=12345)
    with pytest.raises(ModelRequestError, match="fewer rows"):
        server.forward("smollm2", torch.zeros(512, 40, dtype=torch.long))
