"""dan: a syntax error."""

def zero_shot_prompt(dialogue)
    return dialogue
