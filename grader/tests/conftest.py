"""The graders' markers and the `submission` fixture, so that plain `pytest grader/tests` grades the references.

grader.runner.grade() overrides the fixture with a learner's submission (in-process or sandboxed) by passing a
plugin whose `llmstudy_submission` attribute holds it.
"""
from __future__ import annotations

import importlib

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "points(n): points this test is worth")
    config.addinivalue_line("markers", "public: part of the learner's self-check")
    config.addinivalue_line("markers", "concepts(*ids): the deck concepts a failure of this test points to")


def reference_submission():
    """All five references in one namespace (their function names don't overlap), called like a learner's."""
    from llmstudy.grader.submission import InProcessSubmission
    from llmstudy.catalog import EXERCISES

    namespace = {}
    for exercise in EXERCISES:
        module = importlib.import_module(f"llmstudy.solutions.{exercise.id}")
        namespace.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return InProcessSubmission(namespace, "reference")


@pytest.fixture(scope="session")
def submission(request):
    for plugin in request.config.pluginmanager.get_plugins():
        given = getattr(plugin, "llmstudy_submission", None)
        if given is not None:
            return given
    return reference_submission()
