"""The adversarial suite: a class of hostile submissions (tests/adversarial/<case>/) graded in one `llmstudy grade`
run, each with its expected outcome, next to a correct submission that must still get full marks.

Every case targets exercise 01 (positional_encoding), except forged_inplace (03, sampling), forged_minilm (02,
attention), the generation cases (04) and forged_exception_check (01 and 03). Placeholders in the fixtures ({{ROOT}}, {{PORT}}, ...) are filled in per run, so that an attack aims at
this checkout, a port this test listens on, and files it checks.
"""
from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmstudy.grader.sandbox import UID_BASE, Limits, isolation_problem

HERE = Path(__file__).parent / "adversarial"
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 4.0          # CPU s per call: 20x the slowest honest call here (~0.2 s), small enough to keep this quick
SECRET = "LLMSTUDY_TEST_SECRET"

pytestmark = pytest.mark.skipif(isolation_problem() is not None,
                                reason=f"sandbox unavailable here: {isolation_problem()}")


def submitted_files(case: Path):
    """A case's submission files, whatever else a run left in its folder (e.g. __pycache__)."""
    return (p for p in sorted(case.iterdir()) if p.is_file() and p.suffix in (".py", ".ipynb"))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Materialise the class, grade it once with the CLI, and return what the checks need."""
    base = tmp_path_factory.mktemp("adversarial")
    submissions, out = base / "submissions", base / "out"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    token = uuid.uuid4().hex
    marker = base / "marker-created"
    values = {"{{ROOT}}": str(ROOT), "{{PORT}}": str(listener.getsockname()[1]), "{{TOKEN}}": token,
              "{{MARKER}}": str(marker), "{{SUBMISSIONS}}": str(submissions), "{{OUT}}": str(out)}
    for case in sorted(p for p in HERE.iterdir() if p.is_dir()):
        for src in submitted_files(case):
            text = src.read_text()
            for key, value in values.items():
                text = text.replace(key, value)
            (submissions / case.name).mkdir(parents=True, exist_ok=True)
            (submissions / case.name / src.name).write_text(text)
    (submissions / "symlink_to_solutions").mkdir()     # an archive can carry links; this one aims at the reference
    (submissions / "symlink_to_solutions" / "01_positional_encoding.py").symlink_to(
        ROOT / "solutions" / "positional_encoding.py")
    (submissions / "linked_folder").symlink_to(submissions / "correct", target_is_directory=True)

    from llmstudy.cli import main
    os.environ[SECRET] = "the grader's environment must not reach learner code"
    try:
        run = CliRunner().invoke(main, ["grade", str(submissions), "--out", str(out / "results.json"),
                                        "--csv", str(out / "grades.csv"), "--gradescope", str(out / "gradescope"),
                                        "--feedback", str(out / "feedback"), "--workers", "2", "--device", "cpu",
                                        "--timeout", str(TIMEOUT)])
    finally:
        del os.environ[SECRET]
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    try:
        connection = listener.accept()
    except BlockingIOError:
        connection = None
    listener.close()
    records = {s["student"]: next(e for e in s["exercises"] if e["exercise"] == "positional_encoding")
               for s in (results or {"submissions": []})["submissions"]}
    return {"run": run, "results": results, "records": records, "out": out, "submissions": submissions,
            "connection": connection, "token": token, "marker": marker}


def rec(graded, case: str) -> dict:
    return graded["records"][case]


def full(graded, case: str) -> None:
    r = rec(graded, case)
    assert r["status"] == "graded" and r["score"] == r["max_score"] > 0, (case, r["status"], r["message"], r["tests"])


def zeros_score(graded) -> float:
    """The control: a plain wrong answer (a zero table), which computes nothing and so scores 0."""
    r = rec(graded, "zeros")
    assert r["status"] == "graded" and r["score"] == 0 and r["max_score"] > 0, r
    return r["score"]


def record(graded, case: str, exercise: str) -> dict:
    return next(e for s in graded["results"]["submissions"] if s["student"] == case
                for e in s["exercises"] if e["exercise"] == exercise)


def only_some_fail(graded, case: str, pattern: str) -> list[dict]:
    """The misbehaving calls cost exactly their own tests: each failed test says why, and the others pass."""
    r = rec(graded, case)
    failed = [t for t in r["tests"] if not t["passed"]]
    assert r["status"] == "graded", (r["status"], r["message"])
    assert 1 <= len(failed) < len(r["tests"]), r["tests"]
    for t in failed:
        assert re.search(pattern, t["message"]), (t["name"], t["message"])
    return failed


def test_the_batch_finished_and_wrote_every_output(graded):
    run = graded["run"]
    assert run.exit_code == 0, run.output
    out = graded["out"]
    assert len(graded["records"]) == len([p for p in HERE.iterdir() if p.is_dir()]) + 2   # + the two link cases
    assert (out / "grades.csv").read_text().splitlines()[0].startswith("student,")
    assert (out / "gradescope" / "correct" / "results.json").exists()
    assert (out / "feedback" / "correct.html").exists()


def test_correct_submission_gets_full_marks(graded):
    full(graded, "correct")


def test_stub_scores_zero(graded):
    r = rec(graded, "stub")
    assert r["status"] == "graded" and r["score"] == 0, r


def test_infinite_loop_at_import_is_a_timeout(graded):
    r = rec(graded, "infinite_loop_import")
    assert r["status"] == "timeout" and "import" in r["message"], r


def test_infinite_loop_in_a_function_costs_only_that_test(graded):
    only_some_fail(graded, "infinite_loop_call", r"used 4 s of CPU time without finishing")


def test_memory_bomb_stops_at_the_memory_limit(graded):
    failed = only_some_fail(graded, "memory_bomb", r"memory bomb stopped at \d+ MB")
    reached = int(re.search(r"stopped at (\d+) MB", failed[0]["message"]).group(1))
    allowed = Limits().memory_mb
    assert reached <= allowed, f"the bomb held {reached} MB; the sandbox allows {allowed} MB"


def test_fork_bomb_stops_at_the_process_limit(graded):
    failed = only_some_fail(graded, "fork_bomb", r"fork bomb stopped after \d+ processes")
    started = int(re.search(r"after (\d+) processes", failed[0]["message"]).group(1))
    allowed = Limits().processes
    assert started < allowed, f"{started} processes started; the sandbox allows {allowed} tasks"


def test_os_exit_costs_only_the_calls_that_exit(graded):
    only_some_fail(graded, "os_exit", r"process running your code died")


def test_sys_exit_at_import_is_an_error(graded):
    r = rec(graded, "sys_exit_import")
    assert r["status"] == "error" and "SystemExit" in r["message"], r


def test_keyboard_interrupt_costs_only_the_calls_that_raise_it(graded):
    only_some_fail(graded, "keyboard_interrupt", r"KeyboardInterrupt")


def test_monkeypatched_torch_comparisons_gain_nothing(graded):
    assert rec(graded, "monkeypatch_torch")["score"] == zeros_score(graded)


@pytest.mark.parametrize("case", ["always_equal", "tensor_subclass"])
def test_values_that_claim_equality_score_zero(graded, case):
    r = rec(graded, case)
    assert r["status"] == "graded" and r["score"] == 0, r
    assert any("AlwaysEqual" in t["message"] or "tensor subclass" in t["message"] for t in r["tests"]), r["tests"]


@pytest.mark.parametrize("case", ["read_solutions", "import_solutions", "read_other_student", "env_secrets"])
def test_secrets_are_out_of_reach(graded, case):
    """Each of these would score full marks if it could read what it looks for."""
    assert rec(graded, case)["score"] == zeros_score(graded)


def test_no_network_connection_arrives(graded):
    full(graded, "socket_connect")
    assert graded["connection"] is None, "a submission connected to the test's port"


def test_background_processes_are_gone_after_grading(graded):
    full(graded, "background_process")      # it returned only after starting them
    token = graded["token"].encode()
    survivors = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if token in (proc / "cmdline").read_bytes():
                    survivors.append(proc.name)
            except OSError:
                pass
    assert not survivors, f"processes left running: {survivors}"


def test_no_sandbox_process_outlives_its_zygote(graded):
    """Every sandbox uid is UID_BASE + its zygote's pid; a process of that uid whose zygote is gone has leaked.
    (Checked machine-wide, so other batches running meanwhile don't matter: their zygotes are alive.)"""
    leaked = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                uid = proc.stat().st_uid
                if uid >= UID_BASE and not _cmdline_has(Path(f"/proc/{uid - UID_BASE}"), b"grader.sandbox"):
                    leaked.append(proc.name)
            except OSError:
                pass
    assert not leaked, f"processes of a finished sandbox still running: {leaked}"


def _cmdline_has(proc: Path, text: bytes) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_megabytes_of_output_change_nothing(graded):
    full(graded, "big_output")


def test_pickle_payload_never_runs_and_scores_zero(graded):
    r = rec(graded, "pickle_payload")
    assert r["status"] == "graded" and r["score"] == 0, r
    assert not graded["marker"].exists(), "something unpickled the learner's payload"


def test_corrupt_notebook_is_an_error(graded):
    r = rec(graded, "corrupt_notebook")
    assert r["status"] == "error" and "not a readable notebook" in r["message"], r


def test_shell_escapes_never_run(graded):
    full(graded, "shell_escape")
    assert not graded["marker"].exists()


def test_syntax_error_is_an_error_with_its_line(graded):
    r = rec(graded, "syntax_error")
    assert r["status"] == "error" and "syntax error" in r["message"] and "line 3" in r["message"], r


def test_exception_at_import_is_an_error(graded):
    r = rec(graded, "import_exception")
    assert r["status"] == "error" and "ZeroDivisionError" in r["message"], r


def test_files_written_by_learner_code_land_nowhere(graded):
    full(graded, "write_outside")
    planted = [graded["out"] / "planted.txt", graded["submissions"] / "correct" / "planted.txt",
               ROOT / "grader" / "planted.txt", graded["marker"]]
    assert not [p for p in planted if p.exists()]


def test_an_in_place_change_is_seen_even_when_the_check_is_forged(graded):
    """modified_inputs is observed from the grader's side (shared memory), so patching torch or llmstudy.grader.checks in the
    learner's process can't hide that apply_temperature divides the caller's logits in place."""
    r = next(e for s in graded["results"]["submissions"] if s["student"] == "forged_inplace"
             for e in s["exercises"] if e["exercise"] == "sampling")
    test = next(t for t in r["tests"] if t["name"] == "test_no_function_modifies_its_input")
    assert not test["passed"] and "apply_temperature() changed its logits in place" in test["message"], test


def test_the_minilm_check_cannot_be_forged_from_the_learners_process(graded):
    """MiniLM runs in the grader's process and calls multi_head_attention once per layer by value, so patching
    llmstudy.grader.checks or transformers' BERT classes in the learner's process can't hide that this multi_head_attention
    ignores the padding mask. (When the whole forward pass ran in the learner's process, these patches passed it.)"""
    r = next(e for s in graded["results"]["submissions"] if s["student"] == "forged_minilm"
             for e in s["exercises"] if e["exercise"] == "attention")
    test = next(t for t in r["tests"] if t["name"] == "test_mha_inside_every_minilm_layer_gives_the_same_embeddings")
    assert r["status"] == "graded" and not test["passed"], (r["status"], r["message"], test)
    assert "only the padded (shorter) sentences are off, so check the mask" in test["message"], test


@pytest.mark.parametrize("case", ["symlink_to_solutions", "linked_folder"])
def test_symbolic_links_are_refused(graded, case):
    """Either link would otherwise be graded as the learner's own file: the reference, or another student's work."""
    r = rec(graded, case)
    assert r["status"] == "error" and "symbolic link" in r["message"] and r["score"] == 0, r


def test_without_the_sandbox_the_same_attack_succeeds(tmp_path, monkeypatch):
    """A positive control for the suite: with isolation off (--allow-unsandboxed), read_solutions reaches the
    reference and scores full marks, so `score == zeros` above really depends on the sandbox."""
    from llmstudy.grader import sandbox
    from llmstudy.grader import batch

    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "switched off by this test")
    entries = []
    for case in ("correct", "read_solutions"):
        src = next(submitted_files(HERE / case))
        (tmp_path / case).mkdir()
        (tmp_path / case / src.name).write_text(src.read_text().replace("{{ROOT}}", str(ROOT)))
        entries.append((case, "positional_encoding", tmp_path / case / src.name))
    warnings = []
    results = batch.grade_entries(entries, workers=1, device="cpu", progress=False, allow_unsandboxed=True,
                                  timeout=TIMEOUT, console=type("C", (), {"print": staticmethod(lambda line, **_: warnings.append(line))}))
    assert "WITHOUT isolation" in warnings[0]
    scores = {s.student: s.exercises[0].score for s in results.submissions}
    assert scores["read_solutions"] == scores["correct"] == results.max_score, results


def test_top_level_model_loads_get_the_same_proxy(graded):
    """A notebook's top-level load() gets a proxy (no weights in the learner's process), the same object whichever
    way load() is called (the submission raises if two calls give different objects). Its positional_encoding is a
    loop-based alternative, so this also shows another correct way gets full marks."""
    full(graded, "top_level_model_load")


def test_forged_exception_verdicts_gain_nothing(graded):
    """Replacing grader.harness.exception_raised (which once decided the input-check verdict in the learner's
    process) or any grader function found there changes nothing: the verdict is computed in the grader."""
    control = rec(graded, "no_input_checks")
    assert control["status"] == "graded" and 0 < control["score"] < control["max_score"], control
    assert rec(graded, "forged_exception_check")["score"] == control["score"]
    sampling = record(graded, "forged_exception_check", "sampling")
    assert sampling["status"] == "graded" and 0 < sampling["score"] < sampling["max_score"], sampling


def test_a_child_that_claims_value_error_for_everything_scores_zero(graded):
    """The one claim a child makes beyond values is which exception was raised; claiming ValueError for every call
    is worth what raising it for every call is worth: nothing, since input checks count once a table is right."""
    r = rec(graded, "claims_value_error_always")
    assert r["status"] == "graded" and r["score"] == 0, r


def test_garbage_and_forged_frames_cost_only_their_calls(graded):
    r = rec(graded, "garbage_frames")
    assert r["status"] in ("graded", "timeout") and r["score"] == 0, r
    assert all("died" in t["message"] or "time" in t["message"] or "positional_encoding" in t["message"]
               for t in r["tests"]), r["tests"]
    assert graded["run"].exit_code == 0 and not r["message"].startswith("internal")


@pytest.mark.parametrize("case", ["generation_shortcut", "returns_input_ids", "forged_model_calls"])
def test_generation_without_the_loop_scores_zero(graded, case):
    """The library's decoding does not exist behind the model proxy, and probing the proxy reaches nothing."""
    r = record(graded, case, "generation")
    assert r["status"] == "graded" and r["score"] == 0, (r["message"], r["tests"])


@pytest.mark.parametrize("case, status", [("default_argument_loop", "timeout"), ("decorator_exit", "error"),
                                          ("class_body_bomb", "error")])
def test_code_that_runs_at_import_through_definitions_is_contained(graded, case, status):
    """Default arguments, decorators and class bodies run at import: a loop there is a timeout, an exit or a memory
    bomb an error, and the batch goes on."""
    r = rec(graded, case)
    assert r["status"] == status and r["score"] == 0, r


def test_the_graders_environment_is_not_readable_through_proc(graded):
    assert rec(graded, "proc_environ")["score"] == zeros_score(graded)


def test_a_forged_internal_error_is_the_learners_error(graded):
    """Only the frame a child sends before any learner code runs can report our side's failure."""
    r = rec(graded, "forged_internal_error")
    assert r["status"] == "error" and not r["message"].startswith("internal grader error"), r
    assert graded["run"].exit_code == 0
