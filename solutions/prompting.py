"""Reference solution for exercises/05_prompting.ipynb: zero-, one- and few-shot prompts for dialogue summarisation.

In-context learning (ICL): the prompt (context window) holds the task, the input and an answer cue ("Summary:");
one-shot and few-shot prompts first show complete examples, each with its answer, then the new dialogue with only
the cue. This mirrors the course's lab 1 (FLAN-T5 on DialogSum); here the model is SmolLM2 and the dialogues are
exercises/data/dialogues.json.

The templates (fixed; graders compare strings exactly; dialogues and summaries are inserted verbatim):

    zero_shot_prompt(d)  = INSTRUCTION + "\n\n" + d + "\n\n" + ANSWER_CUE
    example block (d, s) = INSTRUCTION + "\n\n" + d + "\n\n" + ANSWER_CUE + " " + s
    few_shot_prompt([(d1, s1), ..., (dk, sk)], d)
                         = block(d1, s1) + EXAMPLE_SEPARATOR + ... + block(dk, sk) + EXAMPLE_SEPARATOR
                           + zero_shot_prompt(d)        (with no examples: just zero_shot_prompt(d))

The prompt ends with "Summary:" and no space: the model's first token then brings its own leading space
(" Tom", " They"), as the examples' summaries do after "Summary: ".
"""
from __future__ import annotations

INSTRUCTION = "Summarize the following conversation."
ANSWER_CUE = "Summary:"
EXAMPLE_SEPARATOR = "\n\n\n"


def zero_shot_prompt(dialogue: str) -> str:
    """The task, the dialogue and the answer cue; the model writes the summary after "Summary:"."""
    return f"{INSTRUCTION}\n\n{dialogue}\n\n{ANSWER_CUE}"


def few_shot_prompt(examples: list[tuple[str, str]], dialogue: str) -> str:
    """One solved block per (dialogue, summary) pair, in the given order, then the zero-shot prompt for `dialogue`.
    One pair gives a one-shot prompt; no pairs give the zero-shot prompt."""
    solved = [f"{zero_shot_prompt(d)} {s}" for d, s in examples]
    return EXAMPLE_SEPARATOR.join(solved + [zero_shot_prompt(dialogue)])


def fit_few_shot_prompt(examples: list[tuple[str, str]], dialogue: str, tokenizer, max_tokens: int,
                        reserve_new_tokens: int = 0) -> tuple[str, int]:
    """(prompt, k): the few-shot prompt with the longest prefix examples[:k] whose token count, plus
    reserve_new_tokens (room for the answer), is at most max_tokens.

    Counts the assembled prompt as the model will see it, special tokens included: len(tokenizer(prompt)["input_ids"]).
    Counting the parts separately is wrong: tokens merge across the joins, and special tokens are added once.
    Raises ValueError if not even the zero-shot prompt fits."""
    for k in range(len(examples), -1, -1):
        prompt = few_shot_prompt(examples[:k], dialogue)
        if len(tokenizer(prompt)["input_ids"]) + reserve_new_tokens <= max_tokens:
            return prompt, k
    needed = len(tokenizer(zero_shot_prompt(dialogue))["input_ids"]) + reserve_new_tokens
    raise ValueError(f"even the zero-shot prompt needs {needed} tokens (with {reserve_new_tokens} reserved for the "
                     f"answer), more than max_tokens={max_tokens}; raise max_tokens or shorten the dialogue")
