"""`llmstudy cards ...` on the command line: start-up without torch, bad data, outputs."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmstudy import cli
from llmstudy.cards.data import CONCEPTS_DIR, load_concepts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def concepts_copy(tmp_path):
    """A private copy of cards/concepts, so an export never rewrites the committed revisions file."""
    return Path(shutil.copytree(CONCEPTS_DIR, tmp_path / "concepts"))


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_help_and_list_import_nothing_heavy_and_export_never_imports_torch(concepts_copy, tmp_path):
    out = tmp_path / "deck.apkg"
    code = f"""
import sys
from click.testing import CliRunner
from llmstudy import cli
runner = CliRunner()
help = runner.invoke(cli.main, ["cards", "export", "--help"])
assert help.exit_code == 0, help.output
listed = runner.invoke(cli.main, ["cards", "list", "--concepts", {str(concepts_copy)!r}])
assert listed.exit_code == 0, listed.output
after_help = sorted(m for m in ("torch", "transformers", "matplotlib", "genanki", "numpy") if m in sys.modules)
result = runner.invoke(cli.main, ["cards", "export", "--concepts", {str(concepts_copy)!r}, "--out", {str(out)!r}])
assert result.exit_code == 0, result.output
print(after_help, "torch" in sys.modules)
"""
    # --help and `cards list` (and so `llmstudy review`, which loads concepts the same way) load nothing heavy;
    # the export itself needs matplotlib and genanki, but never torch.
    assert run_python(code) == "[] False"
    assert out.stat().st_size > 0


def test_export_writes_the_default_file_name_and_a_summary(concepts_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["cards", "export", "--lang", "ja", "--format", "csv",
                                           "--concepts", str(concepts_copy)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "llm-week1-ja.csv").read_text(encoding="utf-8").startswith("#separator:tab\n")
    n = len(load_concepts(concepts_copy))
    assert f"{n} concepts" in result.output and "LLM Week 1 (日本語)" in result.output


def test_export_format_follows_the_out_suffix(concepts_copy, tmp_path):
    out = tmp_path / "cards.csv"
    result = CliRunner().invoke(cli.main, ["cards", "export", "--concepts", str(concepts_copy), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("#separator:tab\n")


def test_bad_data_exits_nonzero_with_one_line_and_writes_nothing(concepts_copy, tmp_path):
    basics = concepts_copy / "01_basics.yaml"
    basics.write_text(basics.read_text(encoding="utf-8").replace("tags: [llm::concept]", "tags: [llm concept]"),
                      encoding="utf-8")
    revisions_before = (concepts_copy / "revisions.json").read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = CliRunner().invoke(cli.main, ["cards", "export", "--concepts", str(concepts_copy),
                                           "--out", str(out_dir / "deck.apkg")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "01_basics.yaml" in lines[0] and "'large-language-model'" in lines[0], result.output
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []
    assert (concepts_copy / "revisions.json").read_bytes() == revisions_before


def test_missing_output_folder_is_a_user_error(concepts_copy, tmp_path):
    result = CliRunner().invoke(cli.main, ["cards", "export", "--concepts", str(concepts_copy),
                                           "--out", str(tmp_path / "nope" / "deck.apkg")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_list_shows_every_concept_in_order(concepts_copy):
    result = CliRunner().invoke(cli.main, ["cards", "list", "--concepts", str(concepts_copy)])
    assert result.exit_code == 0, result.output
    concepts = load_concepts(concepts_copy)
    ids = [line.split()[2] for line in result.output.splitlines()[:-1]]
    assert ids == [c.id for c in concepts]


def test_missing_japanese_font_is_a_one_line_error(concepts_copy, tmp_path, monkeypatch):
    import importlib.util
    from llmstudy.cards import figures
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib_fontja" else
                        real(name, *a))
    figures.render.cache_clear()          # a cached Japanese figure would hide the missing font
    result = CliRunner().invoke(cli.main, ["cards", "export", "--concepts", str(concepts_copy),
                                           "--out", str(tmp_path / "deck.apkg")])
    figures.render.cache_clear()
    assert result.exit_code == 1 and "pip install matplotlib-fontja==1.1.0" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "deck.apkg").exists()
