"""Shared, session-scoped fixtures. Models load once per test session (llmstudy.models.load is cached too)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def one_thread():
    """Bit-exact comparisons need one thread: with 2 threads SmolLM2 logits differ by ~2e-5 between runs."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2(one_thread):
    """(model, tokenizer) for SmolLM2-135M-Instruct on the CPU, eval mode."""
    from llmstudy import models
    return models.load("smollm2", "cpu")


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) for all-MiniLM-L6-v2 on the CPU, eval mode."""
    from llmstudy import models
    return models.load("minilm", "cpu")


# --- the fresh installs (tests/fresh_venvs.py), started in the background once the tests are collected ---------------
FIXTURE_JOBS = {"node": "node", "wheel": "node", "venv": "release"}     # fixture -> the install it waits for
_installs: dict = {}


def pytest_collection_modifyitems(session, config, items):
    wanted = {FIXTURE_JOBS[name] for item in items for name in getattr(item, "fixturenames", ())
              if name in FIXTURE_JOBS}
    if wanted and not config.option.collectonly:
        import tempfile
        from pathlib import Path

        import fresh_venvs
        root = Path(tempfile.mkdtemp(prefix="llmstudy-installs-"))
        _installs["background"] = fresh_venvs.Background(root, [job for job in fresh_venvs.JOBS if job in wanted])


def pytest_unconfigure(config):
    background = _installs.pop("background", None)
    if background is not None:
        import shutil
        background.stop()
        shutil.rmtree(background.root, ignore_errors=True)


@pytest.fixture(scope="session")
def installs():
    """The background installs; `installs.wait("node")` or `installs.wait("release")` returns the built folder."""
    if "background" not in _installs:
        pytest.fail("the fresh installs were not started: run the tests through pytest's collection")
    return _installs["background"]


# --- the example class graded by a LocalCluster (tests/class_runs.py): the reference of test_cluster and test_warm ----
@pytest.fixture(scope="session")
def timeless_class(tmp_path_factory):
    from class_runs import CLASS, without_endless_loop
    return without_endless_loop(CLASS, tmp_path_factory.mktemp("timeless") / "class")


@pytest.fixture(scope="session")
def local(tmp_path_factory, timeless_class):
    """An uninterrupted LocalCluster run on the example class, 2 workers: the reference for every other run."""
    from class_runs import grade
    out = tmp_path_factory.mktemp("local")
    grade(out, "--workers", "2", klass=timeless_class)
    return out
