"""Hidden graders for exercise 02: softmax, causal_mask, scaled_dot_product_attention, multi_head_attention.

Oracles: torch.softmax, torch.nn.functional.scaled_dot_product_attention, torch.nn.MultiheadAttention, and a real
model: the learner's multi_head_attention replaces the self-attention of every all-MiniLM-L6-v2 layer and the sentence
embeddings must match the unmodified model's. The model runs here, in the grader's process; each layer sends its
input and weights to the learner's function by value and uses the returned tensor (see learner_attention_in_bert), so
that nothing the learner's process could patch (llmstudy.grader.checks, transformers, torch) decides the result.

PYTEST_DONT_REWRITE: a learner sees only the assert messages, even when grade() runs inside another pytest
session (whose assertion rewriting would otherwise add source expressions and object addresses).
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import llmstudy.solutions.attention as ref

# float32 results from a different summation order (matmul blocking, softmax reduction) differ by a few ulps of the
# largest intermediate; inputs here are O(1)-O(10), so 1e-5 absolute is ~100 ulps of headroom. Bugs are off by > 1e-2.
ATOL = 1e-5


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def as_tensor(value, call: str) -> torch.Tensor:
    assert isinstance(value, torch.Tensor), f"{call} returned {type(value).__name__}; return a torch.Tensor"
    return value


def check_close(got: torch.Tensor, want: torch.Tensor, call: str, what: str = "the result", atol: float = ATOL):
    got = as_tensor(got, call)
    assert tuple(got.shape) == tuple(want.shape), f"{call}: {what} has shape {list(got.shape)}; expected {list(want.shape)}"
    assert not bool(got.isnan().any()), f"{call}: {what} contains nan"
    err = (got.double() - want.double()).abs().max().item()
    assert err <= atol, f"{call}: {what} is off by up to {err:.3g} (allowed {atol:g})"


def attention_pair(submission, call: str, *args) -> tuple[torch.Tensor, torch.Tensor]:
    result = submission.scaled_dot_product_attention(*args)
    assert isinstance(result, (tuple, list)) and len(result) == 2, \
        f"{call} must return a pair (out, weights); it returned {type(result).__name__}"
    return as_tensor(result[0], call), as_tensor(result[1], call)


# ---------------------------------------------------------------------------------------------------------- softmax

@pytest.mark.concepts("softmax-output")
@pytest.mark.public
@pytest.mark.points(1)
def test_softmax_matches_exp_over_sum(submission):
    x = randn(3, 5, seed=1, scale=3.0)
    got = submission.softmax(x)
    check_close(got, torch.softmax(x.double(), dim=-1), "softmax(x) for x of shape [3, 5]")


@pytest.mark.concepts("softmax-output")
@pytest.mark.public
@pytest.mark.points(1)
def test_softmax_is_stable_for_large_inputs(submission):
    x = randn(4, 6, seed=2) * 1000
    got = as_tensor(submission.softmax(x), "softmax(x * 1000)")
    assert not bool(got.isnan().any()), \
        "softmax(x * 1000) contains nan: exp overflows to inf; subtract the max along dim before exp"
    check_close(got, torch.softmax(x.double(), dim=-1), "softmax(x * 1000)")


@pytest.mark.concepts("softmax-output")
@pytest.mark.points(1)
def test_softmax_uses_the_dim_argument(submission):
    x = randn(3, 4, 5, seed=3, scale=2.0)
    for dim in (0, 1):
        got = submission.softmax(x, dim)
        check_close(got, torch.softmax(x.double(), dim=dim), f"softmax(x, dim={dim}) for x of shape [3, 4, 5]")


@pytest.mark.concepts("softmax-output", "decoder")
@pytest.mark.points(1)
def test_softmax_gives_minus_inf_zero_weight(submission):
    x = randn(2, 6, seed=4)
    x[0, 1] = x[1, 4] = x[1, 5] = float("-inf")
    got = submission.softmax(x)
    check_close(got, torch.softmax(x.double(), dim=-1), "softmax(x) with some -inf entries")


# ------------------------------------------------------------------------------------------------------ causal_mask

def check_causal_mask(submission, n: int):
    got = as_tensor(submission.causal_mask(n), f"causal_mask({n})")
    assert got.dtype == torch.bool, f"causal_mask({n}) has dtype {got.dtype}; return a bool tensor (True = may attend)"
    assert tuple(got.shape) == (n, n), f"causal_mask({n}) has shape {list(got.shape)}; expected [{n}, {n}]"
    for i in range(n):
        for j in range(n):
            if bool(got[i, j]) != (j <= i):
                verb = "may" if j <= i else "may not"
                return f"causal_mask({n})[{i}, {j}] is {bool(got[i, j])}, but query {i} {verb} attend key {j}"
    return None


@pytest.mark.concepts("decoder")
@pytest.mark.public
@pytest.mark.points(1)
def test_causal_mask_lets_query_i_see_keys_up_to_i(submission):
    problem = check_causal_mask(submission, 4)
    assert problem is None, problem


@pytest.mark.concepts("decoder")
@pytest.mark.points(1)
def test_causal_mask_other_sizes(submission):
    for n in (1, 7):
        problem = check_causal_mask(submission, n)
        assert problem is None, problem


# ------------------------------------------------------------------------------------- scaled_dot_product_attention

@pytest.mark.concepts("self-attention")
@pytest.mark.public
@pytest.mark.points(2)
def test_sdpa_without_mask_matches_pytorch(submission):
    q, k, v = randn(2, 5, 8, seed=10), randn(2, 5, 8, seed=11), randn(2, 5, 8, seed=12)
    call = "scaled_dot_product_attention(q, k, v) with q, k, v of shape [2, 5, 8]"
    out, weights = attention_pair(submission, call, q, k, v)
    check_close(weights.sum(-1), torch.ones(2, 5), call, "the sum of each row of weights")
    check_close(out, F.scaled_dot_product_attention(q, k, v), call, "out")


@pytest.mark.concepts("self-attention", "decoder")
@pytest.mark.public
@pytest.mark.points(1)
def test_sdpa_mask_true_means_may_attend(submission):
    q, k, v = randn(1, 3, 4, seed=13), randn(1, 3, 4, seed=14), randn(1, 3, 4, seed=15)
    mask = torch.tensor([[True, False, False], [True, True, False], [False, True, True]])
    call = "scaled_dot_product_attention(q, k, v, mask) with a [3, 3] mask"
    out, weights = attention_pair(submission, call, q, k, v, mask)
    blocked = weights[0][~mask]
    # A masked key must get weight 0; -inf gives exactly 0, -1e9 gives exp(-1e9) = 0 in float32 as well.
    assert bool((blocked.abs() <= 1e-12).all()), \
        f"{call}: keys where the mask is False got weights {[round(float(w), 4) for w in blocked]}; " \
        "True means 'may attend', so a False key must get weight 0"
    check_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), call, "out")


@pytest.mark.concepts("self-attention", "decoder")
@pytest.mark.points(1)
def test_sdpa_causal_with_batch_and_heads_matches_pytorch(submission):
    q, k, v = randn(2, 3, 6, 8, seed=16), randn(2, 3, 6, 8, seed=17), randn(2, 3, 6, 8, seed=18)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    call = "scaled_dot_product_attention(q, k, v, causal mask) with q, k, v of shape [2, 3, 6, 8]"
    out, weights = attention_pair(submission, call, q, k, v, mask)
    check_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), call, "out")


@pytest.mark.concepts("self-attention")
@pytest.mark.points(1)
def test_sdpa_rectangular_shapes_and_broadcast_padding_mask(submission):
    q, k, v = randn(2, 2, 3, 8, seed=19), randn(2, 2, 5, 8, seed=20), randn(2, 2, 5, 4, seed=21)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]   # [2, 1, 1, 5]
    call = "scaled_dot_product_attention(q, k, v, mask) with Lq=3, Lk=5, d_k=8, d_v=4 and a [2, 1, 1, 5] mask"
    out, weights = attention_pair(submission, call, q, k, v, mask)
    check_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), call, "out")
    assert tuple(weights.shape) == (2, 2, 3, 5), \
        f"{call}: weights have shape {list(weights.shape)}; expected [..., Lq, Lk] = [2, 2, 3, 5]"


@pytest.mark.concepts("self-attention")
@pytest.mark.points(1)
def test_sdpa_weights_are_softmax_of_scaled_scores(submission):
    q, k, v = randn(4, 16, seed=22, scale=2.0), randn(6, 16, seed=23, scale=2.0), randn(6, 3, seed=24)
    call = "scaled_dot_product_attention(q, k, v) with q [4, 16], k [6, 16], v [6, 3]"
    _, weights = attention_pair(submission, call, q, k, v)
    want = torch.softmax(q.double() @ k.double().T / math.sqrt(16), dim=-1)
    check_close(weights, want, call, "weights")


# -------------------------------------------------------------------------------------------- multi_head_attention

def torch_mha(d_model: int, num_heads: int, seed: int) -> tuple[torch.nn.MultiheadAttention, dict]:
    """A randomly initialised torch.nn.MultiheadAttention and its projections as {"q": (W, b), ...}."""
    with torch.random.fork_rng(devices=[]):     # nn.Module initialisation draws from the global generator
        torch.manual_seed(seed)
        mha = torch.nn.MultiheadAttention(d_model, num_heads, batch_first=True).eval()
        with torch.no_grad():
            mha.in_proj_bias.normal_(0, 0.5)      # zero by default; make every bias matter
            mha.out_proj.bias.normal_(0, 0.5)
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    weights = {name: (w[i * d_model:(i + 1) * d_model].clone(), b[i * d_model:(i + 1) * d_model].clone())
               for i, name in enumerate("qkv")}
    weights["out"] = (mha.out_proj.weight.detach().clone(), mha.out_proj.bias.detach().clone())
    return mha, weights


def learner_mha(submission, query, key, value, num_heads, weights, mask=None, plain_functions=False):
    out = submission.harness("multi_head_attention_with_linears", query, key, value, num_heads, weights, mask,
                             plain_functions)
    return as_tensor(out, "multi_head_attention(...)")


@pytest.mark.concepts("multi-head-attention", "self-attention")
@pytest.mark.public
@pytest.mark.points(2)
def test_mha_self_attention_matches_torch_multihead_attention(submission):
    mha, weights = torch_mha(16, 4, seed=30)
    x = randn(2, 5, 16, seed=31)
    got = learner_mha(submission, x, x, x, 4, weights)
    with torch.no_grad():
        want, _ = mha(x, x, x, need_weights=False)
    check_close(got, want, "multi_head_attention(x, x, x, num_heads=4, ...) with x [2, 5, 16] and nn.Linear "
                "projections, compared with torch.nn.MultiheadAttention")


def mean_pooled_embeddings(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: the mean of the last hidden
    states over real (non-padding) tokens, then L2-normalised. Returns float32 [len(sentences), hidden]."""
    batch = tokenizer(sentences, padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                       # [B, L, D]
    keep = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)        # [B, L, 1]: 1 for real tokens
    pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1)                # [B, D]
    return F.normalize(pooled, dim=-1).cpu()


@contextlib.contextmanager
def learner_attention_in_bert(submission, model, attention_mask: torch.Tensor):
    """Inside the block, the attention sublayer of every layer of a transformers BertModel (running in this, the
    grader's, process) computes LayerNorm(x + multi_head_attention(x, x, x, heads, query, key, value, output.dense,
    mask)) with the learner's multi_head_attention: the layer's input x [B, L, D], its projection weights and a padding
    mask [B, 1, 1, L] (True = real token) cross to the learner's process by value, the result [B, L, D] crosses back.

    That is exactly what the learner's function replaces in BertAttention: BertSelfAttention (projections, attention,
    head merge) and BertSelfOutput's dense layer (= out_proj); BertSelfOutput's dropout is off in eval mode and its
    residual LayerNorm stays the model's own. The model is always restored on exit, even when the learner's code
    raises."""
    mask = attention_mask.bool()[:, None, None, :]

    def replacement(attention):
        heads = attention.self.num_attention_heads
        linears = {"q": attention.self.query, "k": attention.self.key, "v": attention.self.value,
                   "out": attention.output.dense}
        weights = {name: (linear.weight.detach(), linear.bias.detach()) for name, linear in linears.items()}

        def forward(hidden_states, *args, **kwargs):                    # BertAttention.forward's contract
            x = hidden_states
            mixed = learner_mha(submission, x, x, x, heads, weights, mask)
            assert tuple(mixed.shape) == tuple(x.shape), \
                f"multi_head_attention(x, x, x, num_heads={heads}, ...) inside MiniLM with x of shape " \
                f"{list(x.shape)} returned shape {list(mixed.shape)}; expected {list(x.shape)} (same as the query)"
            return attention.output.LayerNorm(mixed.to(x.dtype) + x), None
        return forward

    patched = []
    try:
        for layer in model.encoder.layer:
            attention = layer.attention
            if "forward" in attention.__dict__:
                raise RuntimeError("this model's attention is already patched; is another check still running?")
            attention.forward = replacement(attention)
            patched.append(attention)
        yield model
    finally:
        for attention in patched:
            del attention.forward                                       # back to BertAttention.forward


@pytest.mark.concepts("multi-head-attention", "encoder-only-model")
@pytest.mark.public
@pytest.mark.points(3)
def test_mha_inside_every_minilm_layer_gives_the_same_embeddings(submission):
    from llmstudy import models

    sentences = ["The cat sat on the mat.", "Attention is all you need.",
                 "Transformers replaced recurrent networks because attention runs in parallel over the whole input."]
    model, tokenizer = models.load("minilm", "cpu")
    want = mean_pooled_embeddings(model, tokenizer, sentences)
    padding = tokenizer(sentences, padding=True, return_tensors="pt")["attention_mask"]     # [3, L]: 1 = real token
    with learner_attention_in_bert(submission, model, padding):
        got = mean_pooled_embeddings(model, tokenizer, sentences)
    # Six float32 layers with a different summation order: measured max difference 1.5e-7 on these unit vectors.
    # 1e-4 leaves room for float32 implementations; ignoring the padding mask or out_proj is off by > 5e-2.
    err = (got - want).abs().max(dim=-1).values                        # [3]; the last sentence is the longest
    worst = int(err.argmax())
    if float(err[-1]) <= 1e-4:
        hint = "only the padded (shorter) sentences are off, so check the mask: padding keys must get weight 0"
    else:
        hint = "even the unpadded sentence is off, so check the head split and merge, the scaling and out_proj"
    assert float(err[worst]) <= 1e-4, \
        f"with your multi_head_attention in every layer of all-MiniLM-L6-v2 (12 heads, D=384), the embedding of " \
        f"{sentences[worst]!r} is off by up to {float(err[worst]):.3g} (allowed 1e-4); {hint}"


@pytest.mark.concepts("multi-head-attention", "encoder-decoder-model")
@pytest.mark.points(2)
def test_mha_cross_attention_with_padding_mask(submission):
    mha, weights = torch_mha(24, 6, seed=32)
    query, memory = randn(2, 3, 24, seed=33), randn(2, 7, 24, seed=34)
    keep = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])          # [B, Lk]: True = real key
    got = learner_mha(submission, query, memory, memory, 6, weights, keep[:, None, None, :])
    with torch.no_grad():
        want, _ = mha(query, memory, memory, key_padding_mask=~keep, need_weights=False)   # torch: True = ignore
    check_close(got, want, "multi_head_attention(query [2, 3, 24], key = value [2, 7, 24], num_heads=6, "
                "mask [2, 1, 1, 7]), compared with torch.nn.MultiheadAttention")


@pytest.mark.concepts("multi-head-attention", "decoder")
@pytest.mark.points(1)
def test_mha_causal_mask(submission):
    mha, weights = torch_mha(16, 2, seed=35)
    x = randn(3, 6, 16, seed=36)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    got = learner_mha(submission, x, x, x, 2, weights, allowed)
    with torch.no_grad():
        want, _ = mha(x, x, x, attn_mask=~allowed, need_weights=False)
    check_close(got, want, "multi_head_attention(x, x, x, num_heads=2, mask=causal [6, 6]) with x [3, 6, 16], "
                "compared with torch.nn.MultiheadAttention")


@pytest.mark.concepts("multi-head-attention")
@pytest.mark.points(1)
def test_mha_matches_with_one_head_and_many_heads(submission):
    x = randn(1, 4, 12, seed=37)
    for heads in (1, 12):
        mha, weights = torch_mha(12, heads, seed=38 + heads)
        got = learner_mha(submission, x, x, x, heads, weights)
        with torch.no_grad():
            want, _ = mha(x, x, x, need_weights=False)
        check_close(got, want, f"multi_head_attention(x, x, x, num_heads={heads}) with x [1, 4, 12]")


@pytest.mark.concepts("multi-head-attention", "self-attention")
@pytest.mark.points(1)
def test_mha_accepts_any_callable_projection(submission):
    _, weights = torch_mha(8, 2, seed=40)
    x = randn(2, 3, 8, seed=41)
    got = learner_mha(submission, x, x, x, 2, weights, None, True)
    want = ref.multi_head_attention(x, x, x, 2, *(lambda t, w=w, b=b: t @ w.T + b for w, b in
                                                  (weights[n] for n in ("q", "k", "v", "out"))))
    check_close(got, want, "multi_head_attention with plain functions as q_proj, k_proj, v_proj, out_proj "
                "(call them, don't read .weight)")
