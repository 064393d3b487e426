"""Grader code that must run beside the learner's code (in the sandboxed child during official grading).

Each function takes `sub` (the learner's functions, by attribute) first and returns plain values, which then cross
back to the trusted grader by value. Used for checks that need the learner's code and a real model together, or that
need to observe the learner's process (e.g. whether an input was modified in place).
"""
from __future__ import annotations
