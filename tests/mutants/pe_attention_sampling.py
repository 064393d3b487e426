"""Plausible wrong implementations (mutants) and correct alternatives for exercises 01-03.

A mutant is the reference namespace with one function swapped for a version with one bug a learner is likely to
write; every mutant must lose points. An alternative is a different but correct implementation (loops, float64,
einsum, -1e9 instead of -inf, another sampler); every alternative must score full marks.
"""
from __future__ import annotations

import math

import torch

import llmstudy.solutions.attention as attention_ref
import llmstudy.solutions.positional_encoding as pe_ref
import llmstudy.solutions.sampling as sampling_ref

REFERENCES = {"positional_encoding": pe_ref, "attention": attention_ref, "sampling": sampling_ref}
MUTANTS: dict[str, dict[str, dict]] = {ex: {} for ex in REFERENCES}          # exercise -> name -> namespace
ALTERNATIVES: dict[str, dict[str, dict]] = {ex: {} for ex in REFERENCES}


def namespace(exercise: str, **functions) -> dict:
    """The reference solution's functions, with some replaced."""
    ns = {name: value for name, value in vars(REFERENCES[exercise]).items() if not name.startswith("__")}
    ns.update(functions)
    return ns


def mutant(exercise: str, replaces: str, name: str):
    def register(fn):
        MUTANTS[exercise][name] = namespace(exercise, **{replaces: fn})
        return fn
    return register


# ------------------------------------------------------------------------------------------- positional_encoding

def _pe(seq_len, d_model, base=10000.0, exponent=None, first="sin", start=0, layout="interleaved",
        dtype=torch.float32, check=True, invert=False):
    """A configurable positional encoding, so that each mutant changes exactly one thing."""
    if check and (seq_len < 1 or d_model < 1 or d_model % 2):
        raise ValueError("bad sizes")
    pos = torch.arange(start, start + seq_len, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)[None, :]
    exponent = (2 * i / d_model) if exponent is None else exponent(i, d_model)
    angles = pos * base ** exponent if invert else pos / base ** exponent
    a, b = (torch.sin(angles), torch.cos(angles)) if first == "sin" else (torch.cos(angles), torch.sin(angles))
    if layout == "interleaved":
        table = torch.stack([a, b], dim=-1).reshape(seq_len, d_model)
    else:
        table = torch.cat([a, b], dim=-1)
    return table.to(dtype)


mutant("positional_encoding", "positional_encoding", "sin-cos-swapped")(
    lambda n, d, base=10000.0: _pe(n, d, base, first="cos"))
mutant("positional_encoding", "positional_encoding", "i-instead-of-2i")(
    lambda n, d, base=10000.0: _pe(n, d, base, exponent=lambda i, d: i / d))
mutant("positional_encoding", "positional_encoding", "concatenated-halves")(
    lambda n, d, base=10000.0: _pe(n, d, base, layout="halves"))
mutant("positional_encoding", "positional_encoding", "base-ignored")(
    lambda n, d, base=10000.0: _pe(n, d, 10000.0))
mutant("positional_encoding", "positional_encoding", "positions-start-at-1")(
    lambda n, d, base=10000.0: _pe(n, d, base, start=1))
mutant("positional_encoding", "positional_encoding", "returns-float64")(
    lambda n, d, base=10000.0: _pe(n, d, base, dtype=torch.float64))
mutant("positional_encoding", "positional_encoding", "multiplies-by-base-power")(
    lambda n, d, base=10000.0: _pe(n, d, base, invert=True))


@mutant("positional_encoding", "positional_encoding", "column-index-as-exponent")
def _pe_column_exponent(seq_len, d_model, base=10000.0):
    # pos / base**(j/d_model) with j the column: the cos column 2i+1 gets the next frequency.
    if seq_len < 1 or d_model < 1 or d_model % 2:
        raise ValueError("bad sizes")
    j = torch.arange(d_model, dtype=torch.float64)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] / base ** (j / d_model)
    return torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles)).float()


@mutant("positional_encoding", "positional_encoding", "odd-d-model-accepted")
def _pe_accepts_odd(seq_len, d_model, base=10000.0):
    # DistilBERT's way, without the check: an odd d_model silently gets a lone sin column.
    if seq_len < 1 or d_model < 1:
        raise ValueError("bad sizes")
    j = torch.arange(d_model, dtype=torch.float64)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] / base ** (2 * (j // 2) / d_model)
    return torch.where(j % 2 == 0, torch.sin(angles), torch.cos(angles)).float()


@mutant("positional_encoding", "positional_encoding", "sizes-not-checked")
def _pe_no_size_check(seq_len, d_model, base=10000.0):
    if d_model % 2:
        raise ValueError("d_model must be even")
    return _pe(max(seq_len, 0), max(d_model, 0), base, check=False)


@mutant("positional_encoding", "positional_encoding", "transposed")
def _pe_transposed(seq_len, d_model, base=10000.0):
    return pe_ref.positional_encoding(seq_len, d_model, base).T.contiguous()


def _pe_loops(seq_len, d_model, base=10000.0):
    if seq_len < 1 or d_model < 1 or d_model % 2 == 1:
        raise ValueError("seq_len and d_model must be >= 1 and d_model even")
    rows = []
    for pos in range(seq_len):
        row = []
        for i in range(d_model // 2):
            angle = pos / base ** (2 * i / d_model)
            row += [math.sin(angle), math.cos(angle)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def _pe_float32_exp_log(seq_len, d_model, base=10000.0):
    # The Annotated Transformer's form, all in float32: div_term = exp(2i * -log(base) / d_model).
    if min(seq_len, d_model) < 1 or d_model % 2:
        raise ValueError("sizes must be >= 1 and d_model even")
    position = torch.arange(seq_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(base) / d_model))
    pe = torch.zeros(seq_len, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def _pe_float32_stacked(seq_len, d_model, base=10000.0):
    if seq_len < 1 or d_model < 1 or d_model % 2:
        raise ValueError("sizes must be >= 1 and d_model even")
    angles = torch.outer(torch.arange(seq_len).float(), 1.0 / base ** (torch.arange(0, d_model, 2).float() / d_model))
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


ALTERNATIVES["positional_encoding"] = {
    "python-loops": namespace("positional_encoding", positional_encoding=_pe_loops),
    "float32-exp-log": namespace("positional_encoding", positional_encoding=_pe_float32_exp_log),
    "float32-stack-flatten": namespace("positional_encoding", positional_encoding=_pe_float32_stacked),
}


# ----------------------------------------------------------------------------------------------------- attention

def _sdpa(q, k, v, mask=None, scale=None, fill=float("-inf"), polarity=True, softmax_dim=-1, return_scores=False):
    """A configurable scaled dot-product attention, so that each mutant changes exactly one thing."""
    scale = math.sqrt(q.shape[-1]) if scale is None else scale(q.shape[-1])
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None:
        scores = scores.masked_fill(~mask if polarity else mask, fill)
    weights = torch.softmax(scores, dim=softmax_dim)
    return weights @ v, scores if return_scores else weights


@mutant("attention", "softmax", "softmax-without-max-subtraction")
def _softmax_naive(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


@mutant("attention", "softmax", "softmax-ignores-dim")
def _softmax_last_dim(x, dim=-1):
    return attention_ref.softmax(x, -1)


mutant("attention", "causal_mask", "causal-mask-upper-triangle")(
    lambda n: torch.ones(n, n, dtype=torch.bool).triu())
mutant("attention", "causal_mask", "causal-mask-without-diagonal")(
    lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1))
mutant("attention", "causal_mask", "causal-mask-float")(
    lambda n: torch.ones(n, n).tril())
mutant("attention", "scaled_dot_product_attention", "mask-polarity-inverted")(
    lambda q, k, v, mask=None: _sdpa(q, k, v, mask, polarity=False))
mutant("attention", "scaled_dot_product_attention", "scaled-by-d_k-not-sqrt")(
    lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=lambda d: d))
mutant("attention", "scaled_dot_product_attention", "not-scaled")(
    lambda q, k, v, mask=None: _sdpa(q, k, v, mask, scale=lambda d: 1.0))
mutant("attention", "scaled_dot_product_attention", "softmax-over-queries")(
    lambda q, k, v, mask=None: _sdpa(q, k, v, mask, softmax_dim=-2))
mutant("attention", "scaled_dot_product_attention", "returns-scores-as-weights")(
    lambda q, k, v, mask=None: _sdpa(q, k, v, mask, return_scores=True))


def _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None, split="transpose",
         merge="transpose", use_mask=True, use_out=True, scale_by_model_dim=False, values_from=None):
    """A configurable multi-head attention, so that each mutant changes exactly one thing."""
    batch, len_q, d_model = query.shape
    len_k, d_head = key.shape[1], d_model // num_heads

    def split_heads(x, length):
        if split == "view":      # the bug: [B, L, D] viewed as [B, H, L, d_head] mixes tokens and heads
            return x.reshape(batch, num_heads, length, d_head)
        return x.reshape(batch, length, num_heads, d_head).transpose(1, 2)

    q = split_heads(q_proj(query), len_q)
    k = split_heads(k_proj(key), len_k)
    v = split_heads((values_from or v_proj)(value), len_k)
    scale = (lambda d: math.sqrt(d_model)) if scale_by_model_dim else None
    heads, _ = _sdpa(q, k, v, mask if use_mask else None, scale=scale)
    concat = heads.reshape(batch, len_q, d_model) if merge == "view" else heads.transpose(1, 2).reshape(
        batch, len_q, d_model)
    return out_proj(concat) if use_out else concat


@mutant("attention", "multi_head_attention", "heads-split-without-transpose")
def _mha_split_view(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    return _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask, split="view")


@mutant("attention", "multi_head_attention", "heads-merged-without-transpose")
def _mha_merge_view(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    return _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask, merge="view")


@mutant("attention", "multi_head_attention", "mha-ignores-mask")
def _mha_no_mask(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    return _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask, use_mask=False)


@mutant("attention", "multi_head_attention", "mha-skips-out-proj")
def _mha_no_out(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    return _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask, use_out=False)


@mutant("attention", "multi_head_attention", "mha-scaled-by-sqrt-d_model")
def _mha_model_scale(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    return _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask, scale_by_model_dim=True)


@mutant("attention", "multi_head_attention", "mha-values-through-k_proj")
def _mha_values_k(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    return _mha(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask, values_from=k_proj)


@mutant("attention", "multi_head_attention", "mha-reads-linear-weight")
def _mha_reads_weight(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    # Works for nn.Linear only; the contract promises just a callable.
    def linear(module):
        return lambda x: torch.nn.functional.linear(x, module.weight, module.bias)
    return _mha(query, key, value, num_heads, linear(q_proj), linear(k_proj), linear(v_proj), linear(out_proj), mask)


def _softmax_logsumexp(x, dim=-1):
    return torch.exp(x - torch.logsumexp(x, dim=dim, keepdim=True))


def _sdpa_einsum_float64(q, k, v, mask=None):
    scores = torch.einsum("...qd,...kd->...qk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)            # -1e9 instead of -inf
    weights = _softmax_logsumexp(scores)
    return torch.einsum("...qk,...kd->...qd", weights, v.double()).to(v.dtype), weights.to(q.dtype)


def _mha_head_loop(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    # One head at a time, slicing the projected features; no reshape/transpose tricks.
    d_head = query.shape[-1] // num_heads
    q, k, v = q_proj(query), k_proj(key), v_proj(value)                  # [B, L, D]
    if mask is not None:
        mask = mask.expand(query.shape[0], num_heads, query.shape[1], key.shape[1])
    outputs = []
    for h in range(num_heads):
        part = slice(h * d_head, (h + 1) * d_head)
        out, _ = _sdpa_einsum_float64(q[..., part], k[..., part], v[..., part],
                                      None if mask is None else mask[:, h])
        outputs.append(out)
    return out_proj(torch.cat(outputs, dim=-1))


def _causal_mask_loops(seq_len):
    return torch.tensor([[j <= i for j in range(seq_len)] for i in range(seq_len)], dtype=torch.bool)


def _mha_einsum(query, key, value, num_heads, q_proj, k_proj, v_proj, out_proj, mask=None):
    b, lq, d = query.shape
    q = q_proj(query).unflatten(-1, (num_heads, d // num_heads))          # [B, Lq, H, dh]
    k = k_proj(key).unflatten(-1, (num_heads, d // num_heads))
    v = v_proj(value).unflatten(-1, (num_heads, d // num_heads))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // num_heads)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return out_proj(torch.einsum("bhqk,bkhd->bqhd", weights, v).flatten(-2))


ALTERNATIVES["attention"] = {
    "loops-float64-minus-1e9": namespace("attention", softmax=_softmax_logsumexp, causal_mask=_causal_mask_loops,
                                         scaled_dot_product_attention=_sdpa_einsum_float64,
                                         multi_head_attention=_mha_head_loop),
    "einsum-unflatten": namespace("attention", multi_head_attention=_mha_einsum),
}


# ------------------------------------------------------------------------------------------------------ sampling

mutant("sampling", "apply_temperature", "temperature-multiplies")(
    lambda logits, temperature: logits * temperature)


@mutant("sampling", "apply_temperature", "temperature-accepts-zero")
def _temperature_unchecked(logits, temperature):
    return logits / temperature


@mutant("sampling", "top_k_filter", "top-k-breaks-ties")
def _top_k_indices(logits, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, min(k, logits.shape[-1])).indices,
                                                               True)
    return logits.masked_fill(~keep, float("-inf"))


@mutant("sampling", "top_k_filter", "top-k-crashes-when-k-exceeds-vocab")
def _top_k_no_clamp(logits, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    return logits.masked_fill(logits < torch.topk(logits, k).values[..., -1:], float("-inf"))


@mutant("sampling", "top_k_filter", "top-k-drops-the-kth")
def _top_k_drops_kth(logits, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
    return logits.masked_fill(logits <= kth, float("-inf"))


@mutant("sampling", "top_k_filter", "top-k-modifies-input-in-place")
def _top_k_in_place(logits, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
    logits[logits < kth] = float("-inf")
    return logits


def _top_p(logits, p, drop_crossing=False, unsort=True, in_place=False):
    """A configurable top-p filter, so that each mutant changes exactly one thing."""
    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")
    probs = torch.softmax(logits.double(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(-1)
    drop = cumulative > p if drop_crossing else (cumulative - sorted_probs) >= p
    if unsort:
        drop = drop.scatter(-1, order, drop)
    if in_place:
        logits[drop] = float("-inf")
        return logits
    return logits.masked_fill(drop, float("-inf"))


mutant("sampling", "top_p_filter", "top-p-drops-the-crossing-token")(
    lambda logits, p: _top_p(logits, p, drop_crossing=True))
mutant("sampling", "top_p_filter", "top-p-mask-left-in-sorted-order")(
    lambda logits, p: _top_p(logits, p, unsort=False))
mutant("sampling", "top_p_filter", "top-p-modifies-input-in-place")(
    lambda logits, p: _top_p(logits, p, in_place=True))
mutant("sampling", "greedy_next_token", "greedy-over-the-first-dim")(
    lambda logits: logits.argmax(dim=0))
mutant("sampling", "greedy_next_token", "greedy-keeps-the-last-dim")(
    lambda logits: logits.argmax(dim=-1, keepdim=True))


def _sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None, order="tkp", greedy_at_zero=True,
            global_rng=False, keep_dim=False, naive_exp=False, in_place=False):
    """A configurable sampler, so that each mutant changes exactly one thing."""
    if temperature == 0 and greedy_at_zero:
        return logits.argmax(-1)
    steps = {"t": lambda x: x / temperature if not in_place else x.div_(temperature),
             "k": lambda x: x if top_k is None else sampling_ref.top_k_filter(x, top_k),
             "p": lambda x: x if top_p is None else sampling_ref.top_p_filter(x, top_p)}
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    x = logits
    for step in order:
        x = steps[step](x)
    probs = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True) if naive_exp else torch.softmax(x, -1)
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, 1, generator=None if global_rng else generator)
    return draws.reshape(probs.shape[:-1] + ((1,) if keep_dim else ()))


def _sampler(name: str, **options):
    def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        return _sample(logits, temperature, top_k, top_p, generator, **options)
    MUTANTS["sampling"][name] = namespace("sampling", sample_next_token=sample_next_token)


_sampler("temperature-applied-after-top-p", order="kpt")
_sampler("top-p-before-top-k", order="tpk")
_sampler("temperature-zero-not-greedy", greedy_at_zero=False)
_sampler("sample-ignores-the-generator", global_rng=True)
_sampler("sample-keeps-a-trailing-dim", keep_dim=True)
_sampler("sample-exp-without-max-subtraction", naive_exp=True)
_sampler("sample-divides-logits-in-place", in_place=True)


def _rows_loop(filter_row):
    """Apply a 1-D filter to every row of [..., V] logits with a Python loop."""
    def apply(logits, *args):
        rows = logits.reshape(-1, logits.shape[-1])
        return torch.stack([filter_row(row, *args) for row in rows]).reshape(logits.shape)
    return apply


def _top_k_row(row, k):
    if k < 1:
        raise ValueError("k must be >= 1")
    values = sorted(row.tolist(), reverse=True)
    kth = values[min(k, len(values)) - 1]
    return torch.tensor([v if v >= kth else float("-inf") for v in row.tolist()])


def _top_p_row(row, p):
    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")
    probs = torch.softmax(row.double(), -1).tolist()
    total, keep = 0.0, set()
    for index in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if total >= p:
            break
        keep.add(index)
        total += probs[index]
    return torch.tensor([v if i in keep else float("-inf") for i, v in enumerate(row.tolist())])


def _sample_inverse_cdf(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    # Inverse-CDF sampling: one uniform number per row, found in the cumulative distribution.
    if temperature == 0:
        return logits.argmax(-1)
    x = logits / temperature if temperature > 0 else sampling_ref.apply_temperature(logits, temperature)
    if top_k is not None:
        x = _rows_loop(_top_k_row)(x, top_k)
    if top_p is not None:
        x = _rows_loop(_top_p_row)(x, top_p)
    cdf = torch.softmax(x.double(), -1).cumsum(-1).reshape(-1, x.shape[-1])
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
    draws = torch.searchsorted(cdf, u, right=True).clamp(max=x.shape[-1] - 1)
    # a token of probability 0 has the same cdf value as its left neighbour and is never found by searchsorted
    return draws.reshape(x.shape[:-1])


def _top_p_ascending(logits, p):
    # transformers' formulation: sort ascending, drop the tokens whose cumulative mass stays within 1 - p.
    if not 0 < p <= 1:
        raise ValueError("p must be in (0, 1]")
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - p)
    drop[..., -1:] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _sample_gumbel(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    # Gumbel-max trick: argmax(logits + Gumbel noise) is a draw from softmax(logits).
    if temperature == 0:
        return logits.argmax(-1)
    x = sampling_ref.apply_temperature(logits.double(), temperature)
    if top_k is not None:
        x = sampling_ref.top_k_filter(x, top_k)
    if top_p is not None:
        x = _top_p_ascending(x, top_p)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return (x - torch.log(-torch.log(u))).argmax(-1)


ALTERNATIVES["sampling"] = {
    "row-loops-inverse-cdf": namespace("sampling", top_k_filter=_rows_loop(_top_k_row),
                                       top_p_filter=_rows_loop(_top_p_row), sample_next_token=_sample_inverse_cdf),
    "float64-gumbel-max-ascending-top-p": namespace("sampling", top_p_filter=_top_p_ascending,
                                                    sample_next_token=_sample_gumbel),
}
