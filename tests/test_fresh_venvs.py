"""The background installs (tests/fresh_venvs.py) report a failed install as a failed test, with its log."""
from __future__ import annotations

import pytest

import fresh_venvs


def test_a_failed_install_fails_the_waiting_test_with_its_log(tmp_path):
    background = fresh_venvs.Background(tmp_path, ["nothing-of-the-kind"])     # the script raises on an unknown job
    with pytest.raises(AssertionError, match="stopped .* before nothing-of-the-kind finished"):
        background.wait("nothing-of-the-kind")
    with pytest.raises(AssertionError, match="was not started"):
        background.wait("node")


def test_a_failing_step_stops_its_job_and_keeps_the_output(tmp_path, monkeypatch):
    monkeypatch.setattr(fresh_venvs, "steps", lambda job, out: [["sh", "-c", "echo pip said no; exit 3"], ["true"]])
    assert fresh_venvs.build("node", tmp_path / "node", tmp_path / "node.log") == 3
    log = (tmp_path / "node.log").read_text()
    assert "pip said no" in log and "$ true" not in log, log
