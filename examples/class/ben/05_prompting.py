"""ben: few-shot examples in reverse order."""
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
    solved = [f"{zero_shot_prompt(d)} {s}" for d, s in reversed(examples)]
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
