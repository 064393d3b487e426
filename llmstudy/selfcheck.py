"""Self-check inside a notebook: run an exercise's public tests on the functions the notebook defines.

    from llmstudy.selfcheck import check
    check("sampling", globals())

The public tests are a subset of the hidden graders; they run here exactly as in official grading (values cross by
value through grader.codec), only in this process.
"""
from __future__ import annotations


def check(exercise_id: str, namespace: dict, public_only: bool = True) -> None:
    """Grade the functions in `namespace` (a notebook's globals()) with the public tests and print each result.

    Returns None, so that a notebook cell ending in check(...) shows only the printed lines."""
    from llmstudy.grader.runner import grade
    from llmstudy.grader.submission import InProcessSubmission

    result = grade(exercise_id, InProcessSubmission(namespace, exercise_id), public_only=public_only)
    for test in result.tests:
        mark = "PASS" if test.passed else "FAIL"
        line = f"{mark}  {test.name} ({test.score:g}/{test.max_score:g})"
        print(line + ("" if test.passed else f"\n      {test.message}"))
    which = "public tests" if public_only else "all tests"
    print(f"{exercise_id}: {result.score:g}/{result.max_score:g} points, {result.message} ({which})")
    for line in concept_lines(result):
        print(line)


def failed_concepts(result) -> list[str]:
    """The deck concept ids the failed tests of `result` point to (their @pytest.mark.concepts), in test order."""
    marked = None
    ids: list[str] = []
    for test in result.tests:
        if test.passed:
            continue
        concepts = getattr(test, "concepts", None)
        if concepts is None:        # a result from before tests carried their concepts: read the markers
            from llmstudy.cards.grades import marked_concepts
            marked = marked if marked is not None else marked_concepts()
            concepts = marked.get((result.exercise, test.name.split("[")[0]), ())
        ids += [c for c in concepts if c not in ids]
    return ids


def concept_lines(result) -> list[str]:
    """What to review after failed tests: the cards by name, how to find them in Anki, and the command that brings
    them forward in `llmstudy review` (the learner runs it: bringing cards forward is their choice)."""
    ids = failed_concepts(result)
    if not ids:
        return []
    from llmstudy.cards.data import load_concepts
    terms = {c.id: c.term_en for c in load_concepts()}
    named = ", ".join(f"{terms.get(i, i)} ({i})" for i in ids)
    search = " or ".join(f'"Id:{i}"' for i in ids)
    return [f"Cards to review: {named}",
            f"  in Anki, search: {search}",
            f"  to make them due today in the terminal: llmstudy review --bring-forward {','.join(ids)}"]


def check_file(path, device: str = "cpu"):
    """The public tests of one notebook or .py file, run in this process (`llmstudy check FILE`).

    Returns grader.runner.ExerciseResult; raises KeyError for a file not named like an exercise and
    grader.extract.SubmissionError for one that can't be read. Exceptions from the learner's code at import
    propagate (the caller reports them)."""
    from llmstudy.grader.extract import load_namespace
    from llmstudy.grader.runner import grade
    from llmstudy.grader.submission import InProcessSubmission
    from llmstudy.catalog import for_file

    exercise = for_file(path)
    namespace = load_namespace(path)
    return grade(exercise.id, InProcessSubmission(namespace, exercise.id, device), public_only=True)
