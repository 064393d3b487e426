"""Run one exercise's hidden graders (grader/tests/test_<id>.py, pytest) against a Submission; collect points.

Each grader test carries @pytest.mark.points(n) (default 1); tests marked @pytest.mark.public are the learner's
self-check subset; @pytest.mark.concepts("id", ...) names the deck concepts that a failure points to (the
feedback page shows them). Results are grader.results types. Messages come from the assertion text or the learner's
exception, never from the test's source (assertion rewriting is off), so hidden tests stay hidden.
"""
from __future__ import annotations

import contextlib
import io
import sys

import pytest

from llmstudy.grader.results import ExerciseResult, TestResult
from llmstudy.grader.submission import LearnerError, Submission
from llmstudy.catalog import by_id


def _message(excinfo) -> str:
    exc = excinfo.value
    if isinstance(exc, (AssertionError, LearnerError)):
        return str(exc).strip() or "the check failed"
    if isinstance(exc, pytest.fail.Exception):
        return str(exc.msg)
    return f"the grader hit {type(exc).__name__}: {str(exc)[:300]}"


class _Collector:
    """pytest plugin: provides the `submission` fixture and records each test's outcome and points."""

    def __init__(self, submission: Submission):
        self._submission = submission
        self.llmstudy_submission = submission      # what grader/tests/conftest.py's `submission` fixture returns
        self.results: dict[str, TestResult] = {}
        self.collect_errors: list[str] = []

    def pytest_configure(self, config):
        config.addinivalue_line("markers", "points(n): points this test is worth")
        config.addinivalue_line("markers", "public: part of the learner's self-check")
        config.addinivalue_line("markers", "concepts(*ids): the deck concepts a failure of this test points to")

    @pytest.fixture
    def submission(self) -> Submission:
        """For grader files run without grader/tests/conftest.py (a learner release's public tests)."""
        return self._submission

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        marker = item.get_closest_marker("points")
        points = float(marker.args[0]) if marker else 1.0
        concepts = item.get_closest_marker("concepts")
        concepts = [str(c) for c in concepts.args] if concepts else []
        name = item.name
        if report.when == "setup" and report.skipped:
            return
        if report.failed:
            self.results[name] = TestResult(name, False, 0.0, points, _message(call.excinfo), concepts)
        elif report.when == "call" and name not in self.results:
            self.results[name] = TestResult(name, True, points, points, "", concepts)

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(str(report.longrepr)[-2000:])


class _FailuresWithoutTracebacks:
    """pytest plugin: a failed phase's report without the traceback text pytest would format for it. Walking and
    parsing the source of every frame costs ~3-45 ms a failure (a stub fails every test) and nothing reads it: the
    messages come from the exception itself (_message), and the terminal plugin is off. Passes and skips are left to
    pytest's own hook (None: the next implementation)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item, call):
        from _pytest.reports import TestReport
        excinfo = call.excinfo
        if excinfo is None or isinstance(excinfo.value, pytest.skip.Exception):
            return None
        return TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, "failed",
                          f"{excinfo.typename}: {str(excinfo.value)[:300]}", call.when, [], call.duration,
                          call.start, call.stop, user_properties=item.user_properties)


@contextlib.contextmanager
def _without_outer_assertion_rewriting():
    """--assert=plain governs only this inner run: inside another pytest session (e.g. our own tests), that session's
    import hook would still rewrite the graders' asserts, adding source text and object addresses to messages."""
    from _pytest.assertion.rewrite import AssertionRewritingHook

    hooks = [hook for hook in sys.meta_path if isinstance(hook, AssertionRewritingHook)]
    for hook in hooks:
        sys.meta_path.remove(hook)
    try:
        yield
    finally:
        sys.meta_path[:0] = hooks


# Every pytest run over the graders (grading here, counting points in grader.batch). no:unraisableexception: that
# plugin runs gc.collect() at session end, ~0.5 s per run with torch and a model loaded, i.e. most of a grade's time.
# no:logging: its per-phase log capture costs ~20 ms a grade; no grader logs. --assert=plain: see the module docstring.
# --disable-plugin-autoload: the plugins installed beside pytest (pytest-timeout, anyio here; pytest-randomly, which
# reorders and reseeds, elsewhere) must not change a grade; loading them cost ~20 ms a grade. The builtin plugins
# of UNUSED go too: no grader uses their fixtures (tmp_path, monkeypatch, recwarn, ...), doctests, unittest classes,
# reports or pdb, and --capture=no skips re-pointing file descriptors around every phase (runner.grade swallows stdout
# itself; learner output is in its own process). Together ~15 ms of a ~60 ms stub grade (alternating runs).
UNUSED = ("doctest", "junitxml", "pastebin", "stepwise", "setuponly", "setupplan", "legacypath", "tmpdir",
          "monkeypatch", "recwarn", "faulthandler", "threadexception", "debugging", "unittest", "python_path")
PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "no:terminal", "-p", "no:unraisableexception", "-p", "no:logging",
               *(arg for name in UNUSED for arg in ("-p", f"no:{name}")), "--capture=no",
               "--disable-plugin-autoload", "--assert=plain", "-o", "addopts=", "-W", "ignore::DeprecationWarning")


def grade(exercise_id: str, submission: Submission, public_only: bool = False) -> ExerciseResult:
    """Run the graders of one exercise against `submission` and return the scored result."""
    path = by_id(exercise_id).grader_path
    collector = _Collector(submission)
    args = [str(path), *PYTEST_ARGS]
    if public_only:
        args += ["-m", "public"]
    with contextlib.redirect_stdout(io.StringIO()), _without_outer_assertion_rewriting():
        code = pytest.main(args, plugins=[collector, _FailuresWithoutTracebacks()])
    if collector.collect_errors or code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        raise RuntimeError(f"the graders for {exercise_id} could not run (exit {code}): "
                           + " | ".join(collector.collect_errors))
    tests = list(collector.results.values())
    result = ExerciseResult(exercise_id, tests=tests,
                            score=sum(t.score for t in tests), max_score=sum(t.max_score for t in tests))
    failed = [t for t in tests if not t.passed]
    result.message = f"{len(tests) - len(failed)}/{len(tests)} tests passed"
    return result
