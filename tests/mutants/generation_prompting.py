"""Plausible wrong implementations (mutants) and correct alternatives for exercises 04 (generation) and 05 (prompting).

A mutant is the reference namespace with one function swapped for a version with one bug a learner is likely to
write; every mutant must lose points. An alternative is a different but correct implementation (KV cache, one row at
a time, another sampler, another search for the budget); every alternative must score full marks.
"""
from __future__ import annotations

import torch

import llmstudy.solutions.generation as generation_ref
import llmstudy.solutions.prompting as prompting_ref

REFERENCES = {"generation": generation_ref, "prompting": prompting_ref}
MUTANTS: dict[str, dict[str, dict]] = {ex: {} for ex in REFERENCES}          # exercise -> name -> namespace
ALTERNATIVES: dict[str, dict[str, dict]] = {ex: {} for ex in REFERENCES}


def namespace(exercise: str, **functions) -> dict:
    """The reference solution's names, with some replaced."""
    ns = {name: value for name, value in vars(REFERENCES[exercise]).items() if not name.startswith("__")}
    ns.update(functions)
    return ns


# ------------------------------------------------------------------------------------------------------- generation

def _pick(logits, temperature, top_k, top_p, generator, bug):
    """logits [B, V] -> next tokens [B], as the reference picks them, with one optional bug."""
    if temperature == 0 or bug == "always-greedy":
        return logits.argmax(dim=-1)
    if bug == "ignores-temperature":
        temperature = 1.0
    if bug == "multiplies-by-temperature":
        temperature = 1 / temperature
    if bug == "filters-before-temperature":
        filtered = generation_ref._filter_logits(logits.float(), 1.0, top_k, top_p) / temperature
    else:
        filtered = generation_ref._filter_logits(logits.float(), temperature,
                                                 None if bug == "ignores-top-k" else top_k,
                                                 None if bug == "ignores-top-p" else top_p)
    probs = filtered.softmax(dim=-1)
    if bug == "uniform-over-the-support":
        probs = (probs > 0).float()
    if bug == "global-rng":
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
              generator=None, bug=None):
    """The reference loop with one optional bug, so that each mutant changes exactly one thing."""
    ids, past = input_ids, None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    steps = max_new_tokens + 1 if bug == "one-token-too-many" else max_new_tokens
    # A KV cache (only to make the mutant suite faster), except where the bug needs every position's logits.
    cached = bug not in ("predicts-from-position-0", "argmax-over-positions")
    with torch.no_grad():
        for _ in range(steps):
            if cached:
                out = model(ids if past is None else ids[:, -1:], past_key_values=past, use_cache=True)
                all_logits, past = out.logits, out.past_key_values                # [B, L or 1, V]
            else:
                all_logits = model(ids).logits                                    # [B, L, V]
            if bug == "argmax-over-positions":
                next_token = all_logits.argmax(dim=1)[:, -1]
            else:
                position = 0 if bug == "predicts-from-position-0" else -1
                next_token = _pick(all_logits[:, position, :], temperature, top_k, top_p, generator, bug)
            if eos_token_id is not None:
                if bug != "finished-rows-not-padded":
                    next_token = next_token.masked_fill(finished, eos_token_id)
                finished = finished | (next_token == eos_token_id)
                if bug == "drops-eos" and finished.all():
                    break
                if bug == "stops-when-any-row-finishes" and finished.any():
                    ids = torch.cat([ids, next_token[:, None]], dim=-1)
                    break
            ids = torch.cat([ids, next_token[:, None]], dim=-1)
            if finished.all() and bug != "never-stops-early":
                break
    if bug == "returns-only-new-tokens":
        return ids[:, input_ids.shape[1]:]
    if bug == "float-ids":
        return ids.float()
    return ids


def _generation_mutant(bug: str):
    def generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
                 generator=None):
        return _generate(model, input_ids, max_new_tokens, eos_token_id, temperature, top_k, top_p, generator, bug)
    return generate


for _bug in ("drops-eos", "one-token-too-many", "finished-rows-not-padded", "predicts-from-position-0",
             "argmax-over-positions", "never-stops-early", "stops-when-any-row-finishes", "ignores-temperature",
             "multiplies-by-temperature", "filters-before-temperature", "ignores-top-k", "ignores-top-p",
             "uniform-over-the-support", "global-rng", "always-greedy", "returns-only-new-tokens", "float-ids"):
    MUTANTS["generation"][_bug] = namespace("generation", generate=_generation_mutant(_bug))


def _calls_model_generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None,
                          top_p=None, generator=None):
    return model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                          pad_token_id=eos_token_id)


def _calls_class_generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None,
                          top_p=None, generator=None):
    return type(model).generate(model, input_ids, do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=eos_token_id, pad_token_id=eos_token_id)


def _calls_generation_mixin(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None,
                            top_p=None, generator=None):
    import transformers
    return transformers.GenerationMixin.generate(model, input_ids, do_sample=False, max_new_tokens=max_new_tokens,
                                                 eos_token_id=eos_token_id, pad_token_id=eos_token_id)



MUTANTS["generation"]["calls-model-generate"] = namespace("generation", generate=_calls_model_generate)
MUTANTS["generation"]["calls-class-generate"] = namespace("generation", generate=_calls_class_generate)
MUTANTS["generation"]["calls-generation-mixin"] = namespace("generation", generate=_calls_generation_mixin)


def _kv_cache_generate(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None, top_p=None,
                       generator=None):
    """Feeds only the newest token after the first step, reusing the model's key/value cache."""
    ids, past = input_ids, None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            step = ids if past is None else ids[:, -1:]
            out = model(step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            next_token = _pick(out.logits[:, -1, :], temperature, top_k, top_p, generator, None)
            if eos_token_id is not None:
                next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
                finished |= next_token == eos_token_id
            ids = torch.cat([ids, next_token[:, None]], dim=-1)
            if eos_token_id is not None and bool(finished.all()):
                break
    return ids


def _one_row_at_a_time(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None,
                       top_p=None, generator=None):
    """Generates each row alone, then pads the rows that finished early with eos to a common length."""
    rows = []
    with torch.no_grad():
        for row in input_ids:
            ids = row[None, :]
            for _ in range(max_new_tokens):
                logits = model(ids).logits[0, -1]                                   # [V]
                token = _pick(logits[None, :], temperature, top_k, top_p, generator, None)
                ids = torch.cat([ids, token[:, None]], dim=-1)
                if eos_token_id is not None and int(token) == eos_token_id:
                    break
            rows.append(ids[0])
    width = max(len(r) for r in rows)
    pad = eos_token_id if eos_token_id is not None else 0     # only rows that ended on eos can be shorter
    return torch.stack([torch.cat([r, r.new_full((width - len(r),), pad)]) for r in rows])


def _buffer_and_inverse_cdf(model, input_ids, max_new_tokens, eos_token_id=None, temperature=0.0, top_k=None,
                            top_p=None, generator=None):
    """Preallocated output buffer; sampling by inverse CDF (torch.rand + searchsorted) in float64; sorts once for
    both filters."""
    B, L = input_ids.shape
    out = torch.empty(B, L + max_new_tokens, dtype=torch.long)
    out[:, :L] = input_ids
    done = torch.zeros(B, dtype=torch.bool)
    n = 0
    with torch.no_grad():
        while n < max_new_tokens and not (eos_token_id is not None and bool(done.all())):
            logits = model(out[:, :L + n]).logits[:, -1, :].double()               # [B, V]
            if temperature == 0:
                token = logits.argmax(dim=-1)
            else:
                x = logits / temperature
                sorted_x, order = x.sort(dim=-1, descending=True)
                keep = torch.ones_like(sorted_x, dtype=torch.bool)
                if top_k is not None:
                    keep &= sorted_x >= sorted_x[:, min(top_k, x.shape[-1]) - 1:min(top_k, x.shape[-1])]
                if top_p is not None:
                    p = torch.softmax(sorted_x.masked_fill(~keep, float("-inf")), dim=-1)
                    keep &= (p.cumsum(dim=-1) - p) < top_p
                p = torch.softmax(sorted_x.masked_fill(~keep, float("-inf")), dim=-1)
                u = torch.rand(B, 1, generator=generator, dtype=torch.float64)
                idx = torch.searchsorted(p.cumsum(dim=-1), u).clamp(max=x.shape[-1] - 1)   # [B, 1]
                idx = torch.where(keep.gather(1, idx), idx, torch.zeros_like(idx))        # rounding at the end
                token = order.gather(1, idx).squeeze(1)
            if eos_token_id is not None:
                token[done] = eos_token_id
                done |= token == eos_token_id
            out[:, L + n] = token
            n += 1
    return out[:, :L + n]


ALTERNATIVES["generation"]["kv-cache"] = namespace("generation", generate=_kv_cache_generate)
ALTERNATIVES["generation"]["one-row-at-a-time"] = namespace("generation", generate=_one_row_at_a_time)
ALTERNATIVES["generation"]["buffer-and-inverse-cdf"] = namespace("generation", generate=_buffer_and_inverse_cdf)


# -------------------------------------------------------------------------------------------------------- prompting

INSTRUCTION, ANSWER_CUE, SEPARATOR = prompting_ref.INSTRUCTION, prompting_ref.ANSWER_CUE, prompting_ref.EXAMPLE_SEPARATOR


def _templates(block=None, separator=SEPARATOR, order=lambda ex: ex, zero=None):
    """(zero_shot_prompt, few_shot_prompt) built like the reference, with one part swapped."""
    zero = zero or (lambda d: f"{INSTRUCTION}\n\n{d}\n\n{ANSWER_CUE}")
    block = block or (lambda d, s: f"{zero(d)} {s}")

    def few_shot_prompt(examples, dialogue):
        return separator.join([block(d, s) for d, s in order(list(examples))] + [zero(dialogue)])
    return zero, few_shot_prompt


def _template_mutant(name, **parts):
    zero, few = _templates(**parts)
    # fit_few_shot_prompt must see the mutated few_shot_prompt, as a learner's would
    MUTANTS["prompting"][name] = namespace("prompting", zero_shot_prompt=zero, few_shot_prompt=few,
                                           fit_few_shot_prompt=_fit(few))


def _fit(few_shot_prompt, count=lambda tok, p: len(tok(p)["input_ids"]), fits=lambda n, r, m: n + r <= m,
         search="descending", on_no_fit="raise"):
    """fit_few_shot_prompt like the reference, with one part swapped."""
    def fit_few_shot_prompt(examples, dialogue, tokenizer, max_tokens, reserve_new_tokens=0):
        examples = list(examples)
        if search == "subset":                          # greedily keeps every example that still fits
            chosen = []
            for ex in examples:
                if fits(count(tokenizer, few_shot_prompt(chosen + [ex], dialogue)), reserve_new_tokens, max_tokens):
                    chosen.append(ex)
            if not fits(count(tokenizer, few_shot_prompt(chosen, dialogue)), reserve_new_tokens, max_tokens):
                raise ValueError("zero-shot does not fit")
            return few_shot_prompt(chosen, dialogue), len(chosen)
        ks = range(len(examples), -1, -1) if search == "descending" else range(len(examples) + 1)
        best = None
        for k in ks:
            prompt = few_shot_prompt(examples[:k], dialogue)
            ok = fits(count(tokenizer, prompt), reserve_new_tokens, max_tokens)
            if search == "descending" and ok:
                return prompt, k
            if search == "ascending":
                if not ok:
                    break
                best = (prompt, k)
        if best is not None:
            return best
        if on_no_fit == "zero-shot":
            return few_shot_prompt([], dialogue), 0
        raise ValueError("not even the zero-shot prompt fits")
    return fit_few_shot_prompt


def _fit_mutant(name, **kwargs):
    MUTANTS["prompting"][name] = namespace("prompting", fit_few_shot_prompt=_fit(prompting_ref.few_shot_prompt,
                                                                                 **kwargs))


_template_mutant("examples-reversed", order=lambda ex: ex[::-1])
_template_mutant("drops-the-first-example", order=lambda ex: ex[1:])
_template_mutant("one-example-too-many", order=lambda ex: ex + ex[-1:])
_template_mutant("missing-answer-cue", zero=lambda d: f"{INSTRUCTION}\n\n{d}\n\n")
_template_mutant("trailing-space-after-cue", zero=lambda d: f"{INSTRUCTION}\n\n{d}\n\n{ANSWER_CUE} ",
                 block=lambda d, s: f"{INSTRUCTION}\n\n{d}\n\n{ANSWER_CUE} {s}")
_template_mutant("wrong-separator", separator="\n\n")
_template_mutant("no-space-before-summary", block=lambda d, s: f"{INSTRUCTION}\n\n{d}\n\n{ANSWER_CUE}{s}")
_template_mutant("single-newlines", zero=lambda d: f"{INSTRUCTION}\n{d}\n{ANSWER_CUE}")

_fit_mutant("budget-ignores-special-tokens", count=lambda tok, p: len(tok(p, add_special_tokens=False)["input_ids"]))
_fit_mutant("counts-words-not-tokens", count=lambda tok, p: len(p.split()))


def _count_parts(tok, prompt):
    """Counts each solved example and the final block separately (and the separators), then adds them up."""
    parts = prompt.split(SEPARATOR)
    return sum(len(tok(p)["input_ids"]) for p in parts) + (len(parts) - 1) * len(tok(SEPARATOR)["input_ids"])


_fit_mutant("counts-the-parts", count=_count_parts)
_fit_mutant("off-by-one-at-the-boundary", fits=lambda n, r, m: n + r < m)
_fit_mutant("ignores-the-reserve", fits=lambda n, r, m: n <= m)
_fit_mutant("returns-zero-shot-instead-of-raising", on_no_fit="zero-shot")
_fit_mutant("skips-long-examples", search="subset")

ALTERNATIVES["prompting"]["ascending-search"] = namespace(
    "prompting", fit_few_shot_prompt=_fit(prompting_ref.few_shot_prompt, search="ascending"))
ALTERNATIVES["prompting"]["encode-count"] = namespace(
    "prompting", fit_few_shot_prompt=_fit(prompting_ref.few_shot_prompt, count=lambda tok, p: len(tok.encode(p))))


def _zero_shot_concat(dialogue):
    return INSTRUCTION + "\n\n" + dialogue + "\n\n" + ANSWER_CUE


def _few_shot_loop(examples, dialogue):
    prompt = ""
    for d, s in examples:
        prompt += _zero_shot_concat(d) + " " + s + SEPARATOR
    return prompt + _zero_shot_concat(dialogue)


def _fit_binary_search(examples, dialogue, tokenizer, max_tokens, reserve_new_tokens=0):
    def fits(k):
        return len(tokenizer(_few_shot_loop(examples[:k], dialogue)).input_ids) + reserve_new_tokens <= max_tokens
    if not fits(0):
        raise ValueError("the zero-shot prompt alone is over budget")
    lo, hi = 0, len(examples)                       # fits(lo) holds; token counts grow with k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return _few_shot_loop(examples[:lo], dialogue), lo


ALTERNATIVES["prompting"]["concatenation-and-binary-search"] = namespace(
    "prompting", zero_shot_prompt=_zero_shot_concat, few_shot_prompt=_few_shot_loop,
    fit_few_shot_prompt=_fit_binary_search)
