"""`llmstudy release`: the folder an instructor hands out, checked as a learner meets it.

Built once per module, and once more as a command, then installed exactly as its README says (`make setup` in the
folder: a fresh .venv, torch 2.13.0 CPU, the model wheels, JupyterLab, the learner package); the slow part, about
two minutes, runs in the background from the session's start (tests/fresh_venvs.py). In that venv:
`llmstudy check` on the stubs (0 points, one message per test, exit 1) and on the references (full public marks,
exit 0), no `solutions` and no `grader.tests` to import, every notebook executed with the reference pasted in, and
`make lab` serving the notebooks. The leak check itself is shown to catch planted leaks, and the nbgrader variant
(built from generate_assignment's notebooks) self-checks with the same package.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from fresh_venvs import clean_env
from llmstudy import cli
from llmstudy.grader import nbgrader as nbg
from llmstudy.grader.extract import load_namespace
from llmstudy.grader.runner import grade
from llmstudy.grader.submission import InProcessSubmission
from llmstudy.release import FORBIDDEN, ReleaseError, leaks, public_tests
from llmstudy.catalog import EXERCISES, by_id

ROOT = Path(__file__).resolve().parent.parent
IDS = [ex.id for ex in EXERCISES]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`llmstudy release OUT`: (OUT, the printed summary)."""
    out = tmp_path_factory.mktemp("release") / "week1"
    result = CliRunner().invoke(cli.main, ["release", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def venv(installs, built):
    """Another `llmstudy release`, run as a command, then `make setup` in its folder, as the README says (built in the
    background by tests/fresh_venvs.py); returns the release folder."""
    out, _ = built
    assert "make setup" in (out / "README.md").read_text().split("\n\n")[1]
    return installs.wait("release") / "week1"


def learner(out: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(out / ".venv" / "bin" / args[0]), *args[1:]], cwd=cwd or out, env=clean_env(),
                          capture_output=True, text=True, timeout=600)


def public_grading(exercise: str, path: Path):
    """What the repository's own self-check gives for `path`: the public tests' names and points, by pytest's marker."""
    return grade(exercise, InProcessSubmission(load_namespace(path), exercise), public_only=True)


# --- the folder ---------------------------------------------------------------------------------------------------
def test_release_has_the_notebooks_data_and_the_learner_files(built):
    out, summary = built
    for ex in EXERCISES:
        assert (out / "exercises" / ex.notebook).read_bytes() == ex.notebook_path.read_bytes()
        assert (out / "llmstudy" / "public_tests" / f"test_{ex.id}.py").is_file()
    assert (out / "exercises" / "data" / "dialogues.json").is_file()
    readme = (out / "README.md").read_text()
    assert readme.index("make setup") < readme.index("make lab") < readme.index("pip install")
    assert not (out / "solutions").exists() and not (out / "llmstudy" / "solutions").exists()
    assert not (out / "grader").exists() and not (out / "llmstudy" / "grader" / "tests").exists()
    for words in ("wrote", "left out", "solutions/", "hidden tests", "zip", "git", "LMS", "--notebooks"):
        assert words in summary


def test_release_ships_exactly_the_public_tests(built):
    out, _ = built
    for ex in EXERCISES:
        shipped = ast.parse((out / "llmstudy" / "public_tests" / f"test_{ex.id}.py").read_text())
        names = [n.name for n in shipped.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")]
        want = [t.name for t in public_grading(ex.id, ex.notebook_path).tests]
        assert names == want, ex.id
        imported = {a.name for n in ast.walk(shipped) if isinstance(n, ast.Import) for a in n.names} | \
                   {n.module for n in ast.walk(shipped) if isinstance(n, ast.ImportFrom)}
        assert not any(m.startswith(FORBIDDEN) for m in imported), (ex.id, imported)


def test_release_has_no_leaks(built):
    out, _ = built
    hidden, values = set(), set()
    for ex in EXERCISES:
        cut = public_tests.cut_public_tests(ex, ex.grader_path.read_text(encoding="utf-8"))
        hidden |= set(cut.hidden)
        values |= leaks.hidden_values(cut)
    assert hidden and values          # there is something to look for
    assert leaks.find_leaks(out, hidden, values) == []


def test_leak_check_catches_an_answer_a_hidden_name_and_a_hidden_value(built, tmp_path):
    out, _ = built
    copy = tmp_path / "leaky"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".venv"))
    cut = public_tests.cut_public_tests(by_id("prompting"), by_id("prompting").grader_path.read_text(encoding="utf-8"))
    values = leaks.hidden_values(cut)
    given = leaks._given_lines() | leaks._import_lines()
    answer = next(line.strip() for line in (ROOT / "solutions" / "sampling.py").read_text().splitlines()
                  if len(line.strip()) > 30 and line.strip() not in given)
    value = sorted(v for v in values if isinstance(v, str))[0]
    with open(copy / "README.md", "a") as f:
        f.write(f"\n{cut.hidden[0]}\n")
    with open(copy / "llmstudy" / "selfcheck.py", "a") as f:
        f.write(f"\n    {answer}\nLEAK = {value!r}\n")
    with open(copy / ".gitignore", "a") as f:
        f.write(f"# {cut.hidden[0]}_and_more is another name, not the hidden test's\n")
    found = leaks.find_leaks(copy, set(cut.hidden), values)
    assert not any(".gitignore" in x for x in found), found
    assert any("README.md" in x and cut.hidden[0] in x for x in found), found
    assert any("selfcheck.py" in x and "solutions/sampling.py" in x for x in found), found
    assert any("selfcheck.py" in x and "hidden expected value" in x for x in found), found


def test_public_tests_cut_keeps_what_they_need_and_drops_the_rest():
    source = '''"""Hidden graders: secret oracle notes."""
import math

import pytest

import llmstudy.solutions.x as ref

TOL = 1e-5
SECRET = "only the hidden test compares with this"


def helper(x):
    return math.sqrt(x)


def hidden_helper():
    return ref.answer(SECRET)


@pytest.fixture
def data():
    return [1.0, 4.0]


@pytest.mark.public
@pytest.mark.points(2)
def test_public_one(data):
    assert abs(helper(data[1]) - 2) < TOL


@pytest.mark.points(1)
def test_hidden_one():
    assert hidden_helper() == 3
'''
    cut = public_tests.cut_public_tests(by_id("attention"), source)
    kept = {n.name if hasattr(n, "name") else ast.unparse(n) for n in ast.parse(cut.source).body}
    assert {"helper", "data", "test_public_one", "TOL = 1e-05", "import math", "import pytest"} <= kept
    assert not {"hidden_helper", "test_hidden_one"} & kept
    assert "solutions" not in cut.source and "SECRET" not in cut.source and "secret oracle" not in cut.source
    assert cut.public == ["test_public_one"] and cut.hidden == ["test_hidden_one"]
    assert "only the hidden test compares with this" in leaks.hidden_values(cut)
    with pytest.raises(ReleaseError, match="solutions"):
        public_tests.cut_public_tests(by_id("attention"), source.replace("helper(data[1])", "ref.answer(data[1])"))


def test_public_prompt_oracle_agrees_with_the_reference():
    """The public tests of exercise 05 compare against the notebook's template written out in the grader file."""
    import llmstudy.solutions.prompting as ref

    spec = importlib.util.spec_from_file_location("grader_prompting", by_id("prompting").grader_path)
    grader = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():          # its points/public marks are registered only when grading
        warnings.simplefilter("ignore")
        spec.loader.exec_module(grader)
    for k in range(4):
        examples = [grader.pair(i) for i in range(k)]
        assert grader.documented_prompt(examples, grader.dialogue(5)) == ref.few_shot_prompt(examples,
                                                                                              grader.dialogue(5))


def test_release_refuses_notebooks_with_the_answers_in_them(tmp_path):
    """The usual instructor's slip: pointing --notebooks at nbgrader's source/ (the reference in every stub)."""
    source = tmp_path / "source"
    source.mkdir()
    for ex in EXERCISES:
        nb = nbformat.read(ex.notebook_path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(ex.solution_path.read_text(encoding="utf-8")))
        nbformat.write(nb, source / ex.notebook)
    result = CliRunner().invoke(cli.main, ["release", str(tmp_path / "out"), "--notebooks", str(source)])
    assert result.exit_code == 1 and "would leak" in result.output and "solutions/" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))   # nothing left to hand out


def test_release_and_lab_say_what_to_fix(built, tmp_path):
    out, _ = built
    runner = CliRunner()
    result = runner.invoke(cli.main, ["release", str(out)])
    assert result.exit_code == 1 and "already has files" in result.output and "Traceback" not in result.output
    (tmp_path / "few").mkdir()
    shutil.copyfile(EXERCISES[0].notebook_path, tmp_path / "few" / EXERCISES[0].notebook)
    result = runner.invoke(cli.main, ["release", str(tmp_path / "out"), "--notebooks", str(tmp_path / "few")])
    assert result.exit_code == 1 and f"has no {EXERCISES[1].notebook}" in result.output
    assert not (tmp_path / "out").exists()           # nothing half-written
    result = runner.invoke(cli.main, ["lab", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no notebooks folder" in result.output


# --- installed as the README says ---------------------------------------------------------------------------------
def check_lines(output: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(mark, name, points) per test line of `llmstudy check`, and the message lines under them."""
    tests = re.findall(r"^(PASS|FAIL)  (\w+) \(([\d.]+/[\d.]+)\)$", output, flags=re.M)
    messages = [line for line in output.splitlines() if line.startswith("      ") and line.strip()]
    return tests, messages


@pytest.mark.parametrize("exercise", IDS)
def test_check_on_the_stubs_gives_zero_with_a_message_per_test(venv, exercise):
    ex = by_id(exercise)
    proc = learner(venv, "llmstudy", "check", f"exercises/{ex.notebook}")
    want = public_grading(exercise, ex.notebook_path)
    tests, messages = check_lines(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert [(m, n) for m, n, _ in tests] == [("FAIL", t.name) for t in want.tests], proc.stdout
    assert len(messages) == len(tests) and all("NotImplementedError" in m for m in messages), proc.stdout
    assert f"{exercise}: 0/{want.max_score:g} points" in proc.stdout


@pytest.mark.parametrize("exercise", IDS)
def test_check_on_the_reference_gives_full_public_marks(venv, exercise, tmp_path):
    ex = by_id(exercise)
    submission = tmp_path / f"{ex.stem}.py"           # outside the release: the learner's own .py file
    shutil.copyfile(ex.solution_path, submission)
    proc = learner(venv, "llmstudy", "check", str(submission))
    want = public_grading(exercise, ex.notebook_path)
    tests, _ = check_lines(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert [n for _, n, _ in tests] == [t.name for t in want.tests]
    assert f"{exercise}: {want.max_score:g}/{want.max_score:g} points" in proc.stdout


def test_release_venv_imports_every_shipped_module_from_any_folder(venv, tmp_path):
    shipped = sorted(".".join(p.relative_to(venv).with_suffix("").parts).removesuffix(".__init__")
                     for p in (venv / "llmstudy").rglob("*.py"))
    assert "llmstudy.selfcheck" in shipped and "llmstudy.grader.runner" in shipped
    assert not [p.name for p in venv.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
                and p.name != "llmstudy"], "the learner package claims a name besides llmstudy"
    probe = f"import importlib\nfor m in {shipped!r}:\n    importlib.import_module(m)\nprint('ok')"
    proc = learner(venv, "python", "-c", probe, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_release_venv_cannot_import_the_answers_or_the_hidden_graders(venv, tmp_path):
    probe = ("import importlib, llmstudy.catalog as e\n"
             "for m in ('llmstudy.solutions', 'llmstudy.solutions.attention', 'llmstudy.grader.tests',\n"
             "          'llmstudy.grader.tests.test_attention', 'solutions', 'grader.tests'):\n"
             "    try:\n        importlib.import_module(m); print('IMPORTED', m)\n"
             "    except ModuleNotFoundError:\n        print('missing', m)\n"
             "print(e.by_id('attention').grader_path)\n")
    for cwd in (venv, tmp_path):
        proc = learner(venv, "python", "-c", probe, cwd=cwd)
        assert proc.returncode == 0 and "IMPORTED" not in proc.stdout, proc.stdout + proc.stderr
        assert proc.stdout.count("missing") == 6
        assert proc.stdout.strip().endswith("llmstudy/public_tests/test_attention.py")


def with_reference(ex, notebook: Path) -> nbformat.NotebookNode:
    """The notebook with each stub function replaced by the reference's, and the reference's imports and helpers
    first in that cell: what a learner who solved everything has."""
    reference = ex.solution_path.read_text(encoding="utf-8")
    tree = ast.parse(reference)
    functions = {n.name: ast.get_source_segment(reference, n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    support = "\n\n".join(ast.get_source_segment(reference, n) for n in tree.body
                          if not (isinstance(n, ast.FunctionDef) and n.name in ex.functions)
                          and not isinstance(n, ast.Expr) and not (isinstance(n, ast.ImportFrom)
                                                                   and n.module == "__future__"))
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or "raise NotImplementedError" not in cell.source:
            continue
        lines = cell.source.splitlines()
        stubs = [n for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef) and n.name in ex.functions]
        for fn in sorted(stubs, key=lambda n: n.lineno, reverse=True):
            lines[fn.lineno - 1 - len(fn.decorator_list):fn.end_lineno] = functions[fn.name].splitlines()
        cell.source = support + "\n\n\n" + "\n".join(lines)
    return nb


def test_every_release_notebook_runs_top_to_bottom_with_the_reference(venv, tmp_path):
    solved = []
    for ex in EXERCISES:
        path = tmp_path / ex.notebook
        nbformat.write(with_reference(ex, venv / "exercises" / ex.notebook), path)
        solved.append(str(path))
    # One nbconvert, one kernel per notebook in turn; SmolLM2's experiments take most of the time.
    proc = learner(venv, "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(tmp_path / "ran"),
                   "--ExecutePreprocessor.timeout=600", *solved, cwd=venv / "exercises")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for ex in EXERCISES:
        ran = nbformat.read(tmp_path / "ran" / ex.notebook, as_version=4)
        outputs = [o for c in ran.cells if c.cell_type == "code" for o in c.outputs]
        printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "FAIL" not in printed and re.search(rf"{ex.id}: (\d+)/\1 points", printed), (ex.id, printed[-2000:])
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{ex.id}: the experiment drew no figure"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contents(url: str, deadline: float) -> set[str]:
    """The names in the server's root folder; retried until `deadline` (the URL can be printed a moment before the
    socket accepts)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return {item["name"] for item in json.load(reply)["content"]}
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_make_lab_serves_the_notebooks(venv):
    """`make lab`, the README's second command: JupyterLab comes up with the exercise notebooks as its root."""
    port = free_port()
    env = clean_env() | {"JUPYTER_PORT": str(port), "BROWSER": "true"}   # `true`: a browser that opens nothing
    proc = subprocess.Popen(["make", "lab"], cwd=venv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline, seen, url = time.monotonic() + 120, [], None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            seen.append(line)
            found = re.search(rf"http://(?:127\.0\.0\.1|localhost):{port}/lab\?token=(\w+)", line)
            url = found and found.group(1)
        assert url, "".join(seen)[-3000:]
        names = contents(f"http://127.0.0.1:{port}/api/contents?token={url}", deadline)
        assert {ex.notebook for ex in EXERCISES} | {"data"} <= names, names
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# --- the nbgrader variant -----------------------------------------------------------------------------------------
def test_nbgrader_release_self_checks_with_the_learner_package(venv, tmp_path):
    """The same pack with generate_assignment's student notebooks: their self-check cell runs with the learner
    package alone, on the stub (0 points) and once solved (full public marks)."""
    course = tmp_path / "course"
    result = CliRunner().invoke(cli.main, ["nbgrader", "init", str(course)])
    assert result.exit_code == 0, result.output
    proc = nbg.run_nbgrader(course, "generate_assignment", "week1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = course / "release" / "week1"
    result = CliRunner().invoke(cli.main, ["release", str(tmp_path / "out"), "--notebooks", str(student)])
    assert result.exit_code == 0, result.output
    ex = by_id("positional_encoding")
    stub = tmp_path / "out" / "exercises" / ex.notebook
    solved = tmp_path / "solved" / ex.notebook
    solved.parent.mkdir()
    nbformat.write(nbg.solved_notebook(nbformat.read(stub, as_version=4),
                                       nbformat.read(course / "source" / "week1" / ex.notebook, as_version=4)), solved)
    want = public_grading(ex.id, ex.notebook_path).max_score
    got = learner(venv, "llmstudy", "check", str(stub))
    assert got.returncode == 1 and f"{ex.id}: 0/{want:g} points" in got.stdout, got.stdout + got.stderr[-2000:]
    # the solved notebook run top to bottom: its self-check cell (the grade cell, hidden part removed) passes
    got = learner(venv, "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(tmp_path / "ran"),
                  str(solved), cwd=tmp_path / "out" / "exercises")
    assert got.returncode == 0, got.stderr[-3000:]
    [graded] = [c for c in nbformat.read(tmp_path / "ran" / ex.notebook, as_version=4).cells
                if c.metadata.get("nbgrader", {}).get("grade")]
    printed = "".join(o.get("text", "") for o in graded.outputs)
    assert "FAIL" not in printed and f"{ex.id}: {want:g}/{want:g} points" in printed, printed
