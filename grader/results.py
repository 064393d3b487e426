"""The one result type of grading, from one test to a whole class, built once and serialised once:

    TestResult -> ExerciseResult -> StudentResult -> ClassResult

grader.runner builds each ExerciseResult from pytest's reports, grader.batch puts them together in entry order,
`ClassResult.to_json()` is results.json, and every report writer (grader.report, grader.nbgrader) only reads them.

An exercise's outcome is its `status`, never a prefix of its message:
  graded    the hidden tests ran (some may have failed or run out of time)
  timeout   grading stopped early: the learner's code used up its time for the whole submission
  missing   no file was submitted
  error     the learner's side: a file that can't be read, code that fails at import, a worker that kept dying
  internal  our side: the sandbox broke, a grader crashed; not the learner's fault, and `llmstudy grade` exits 2
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

STATUSES = ("graded", "timeout", "missing", "error", "internal")


@dataclass
class TestResult:
    __test__ = False                  # not a pytest test class, despite the name
    name: str
    passed: bool
    score: float
    max_score: float
    message: str = ""
    concepts: list[str] = field(default_factory=list)    # deck concept ids, from @pytest.mark.concepts(...)

    @classmethod
    def from_dict(cls, d: dict) -> "TestResult":
        return cls(d["name"], d["passed"], d["score"], d["max_score"], d.get("message", ""),
                   list(d.get("concepts", [])))


@dataclass
class ExerciseResult:
    exercise: str
    file: str = ""                    # the submitted file's name, "" if none
    status: str = "graded"            # one of STATUSES
    score: float = 0.0
    max_score: float = 0.0
    message: str = ""
    tests: list[TestResult] = field(default_factory=list)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExerciseResult":
        return cls(d["exercise"], d.get("file", ""), d["status"], d["score"], d["max_score"], d.get("message", ""),
                   [TestResult.from_dict(t) for t in d.get("tests", [])])


@dataclass
class StudentResult:
    student: str
    exercises: list[ExerciseResult]

    @property
    def score(self) -> float:
        return sum(ex.score for ex in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(ex.max_score for ex in self.exercises)

    def to_dict(self) -> dict:
        return {"student": self.student, "score": self.score, "max_score": self.max_score,
                "exercises": [ex.to_dict() for ex in self.exercises]}


@dataclass
class ClassResult:
    submissions: list[StudentResult]

    @property
    def max_score(self) -> float:
        """Each graded exercise's points once (every student has a record for every exercise)."""
        per_exercise = {ex.exercise: ex.max_score for sub in self.submissions for ex in sub.exercises}
        return sum(per_exercise.values())

    @property
    def exercise_ids(self) -> list[str]:
        return list(dict.fromkeys(ex.exercise for sub in self.submissions for ex in sub.exercises))

    def records(self):
        """(StudentResult, ExerciseResult) for every record, in order."""
        return [(sub, ex) for sub in self.submissions for ex in sub.exercises]

    def to_dict(self) -> dict:
        return {"max_score": self.max_score, "submissions": [sub.to_dict() for sub in self.submissions]}

    def to_json(self) -> str:
        """results.json: the same bytes for the same results, however and in whatever order they were graded."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "ClassResult":
        return cls([StudentResult(s["student"], [ExerciseResult.from_dict(e) for e in s["exercises"]])
                    for s in d["submissions"]])
