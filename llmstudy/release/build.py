"""`llmstudy release OUT` (instructor side): the steps of llmstudy/release/ in order, written into a staging folder
that is moved into place only once the leak check finds nothing."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llmstudy.catalog import EXERCISES, EXERCISES_DIR, for_file
from llmstudy.release import PUBLIC_TESTS, ROOT, ReleaseError
from llmstudy.release.leaks import find_leaks, hidden_values
from llmstudy.release.learner_package import (LEARNER_MAKEFILE, LEARNER_README, dependencies, exercise_table,
                                              in_package, install_pins, ipython_free, learner_modules, package_data,
                                              pyproject)
from llmstudy.release.public_tests import cut_public_tests, imported_modules


@dataclass
class Release:
    """What `build` wrote and what it left out, for the instructor's summary."""
    out: Path
    notebooks: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    public_tests: dict[str, list[str]] = field(default_factory=dict)   # exercise id -> public test names
    hidden_tests: dict[str, list[str]] = field(default_factory=dict)   # exercise id -> hidden test names (left out)
    left_out_modules: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The instructor's summary: what was written, what was left out, how to hand it out."""
        public = sum(map(len, self.public_tests.values()))
        hidden = sum(map(len, self.hidden_tests.values()))
        solutions = len(list((ROOT / "solutions").glob("*.py")))
        name = self.out.name
        return [
            f"wrote {self.out}/",
            f"  exercises/: {len(self.notebooks)} notebooks with stubs, and data/",
            f"  {PUBLIC_TESTS}/: {public} public tests ({', '.join(f'{k} {len(v)}' for k, v in self.public_tests.items())})",
            f"  the learner package (pyproject.toml, `llmstudy check`, `llmstudy lab`): {', '.join(self.modules)}",
            f"  its data files: {len(self.data_files)} ({', '.join(sorted({str(Path(f).parent) for f in self.data_files})) or '-'})",
            "  README.md and Makefile: `make setup`, then `make lab`",
            "left out",
            f"  solutions/ ({solutions} files), grader/tests/: the {hidden} hidden tests, their names and expected values "
            f"(checked: none of them is in the folder)",
            f"  instructor-only code: {', '.join(self.left_out_modules) or '-'}; examples/, bench/, tests/",
            "hand it out as",
            f"  a zip:       cd {self.out.parent} && zip -r {name}.zip {name} -x '{name}/.venv/*'",
            f"  a git repo:  cd {self.out} && git init && git add . && git commit -m 'week 1' "
            "(then push where learners can clone it)",
            "  an LMS:      upload the zip; learners unzip it and run `make setup`, then `make lab`",
            "  for an nbgrader course, build it from the student notebooks instead: "
            "llmstudy release OUT --notebooks COURSE/release/<assignment>",
        ]


def build(out: str | Path, notebooks: str | Path | None = None) -> Release:
    """Write the learner's release into `out` (which must not exist or be empty); `notebooks` replaces exercises/
    as the source of the notebooks (e.g. COURSE/release/week1 from nbgrader generate_assignment)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out} already has files; give a new or empty folder")
    source_dir = Path(notebooks) if notebooks is not None else EXERCISES_DIR
    chosen = {}
    for ex in EXERCISES:
        path = source_dir / ex.notebook
        if not path.is_file():
            raise ReleaseError(f"{source_dir} has no {ex.notebook}; give the folder with all five exercise notebooks")
        for_file(path)
        chosen[ex] = path

    release = Release(out.resolve())
    cuts = {ex: cut_public_tests(ex, ex.grader_path.read_text(encoding="utf-8")) for ex in EXERCISES}
    test_imports = set()
    for cut in cuts.values():
        test_imports |= {m for m in imported_modules(cut.source)}
    modules = learner_modules(test_imports)
    data_files = package_data(modules)
    shipped = [p.read_text(encoding="utf-8") for p in modules] + [c.source for c in cuts.values()]
    shipped += ["".join(c["source"]) for p in chosen.values()
                for c in json.loads(p.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    release.dependencies = dependencies([ipython_free(s) for s in shipped])
    torch, wheels = install_pins()

    # Written into a hidden sibling folder first, moved into place only once the leak check passes: a failed build
    # leaves nothing that could be handed out.
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for path in modules:
            target = stage / in_package(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            release.modules.append(str(in_package(path)))
        for path in data_files:
            target = stage / in_package(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            release.data_files.append(str(in_package(path)))
        tests_dir = stage / PUBLIC_TESTS
        tests_dir.mkdir(parents=True, exist_ok=True)
        (tests_dir / "__init__.py").write_text('"""The public tests: the self-check subset of the graders."""\n')
        for ex, cut in cuts.items():
            (tests_dir / f"test_{ex.id}.py").write_text(cut.source, encoding="utf-8")
            release.public_tests[ex.id], release.hidden_tests[ex.id] = cut.public, cut.hidden
        (stage / "exercises").mkdir()
        for ex, path in chosen.items():
            shutil.copyfile(path, stage / "exercises" / ex.notebook)
            release.notebooks.append(f"exercises/{ex.notebook}")
        shutil.copytree(EXERCISES_DIR / "data", stage / "exercises" / "data")
        (stage / ".gitignore").write_text(".venv/\n__pycache__/\n*.egg-info/\n", encoding="utf-8")
        (stage / "pyproject.toml").write_text(pyproject(release.dependencies, release.modules), encoding="utf-8")
        (stage / "Makefile").write_text(LEARNER_MAKEFILE.format(torch=torch, wheels=" ".join(wheels)),
                                        encoding="utf-8")
        (stage / "README.md").write_text(LEARNER_README.format(torch=torch, wheels=" ".join(wheels),
                                                             table=exercise_table()), encoding="utf-8")

        shipped_modules = set(release.modules)
        folders = {p.relative_to(ROOT).parts[0] for p in modules}
        release.left_out_modules = sorted(str(in_package(p)) for folder in sorted(folders)
                                          for p in (ROOT / folder).rglob("*.py") if "tests" not in p.parts
                                          and str(in_package(p)) not in shipped_modules)
        hidden_names = {name for names in release.hidden_tests.values() for name in names}
        values = set().union(*(hidden_values(cut) for cut in cuts.values()))
        leaks = find_leaks(stage, hidden_names, values)
        if leaks:
            raise ReleaseError(f"the release would leak what the graders hide ({len(leaks)} finding(s)), so {out} "
                               "was not written:\n  " + "\n  ".join(leaks[:20]))
        if out.exists():
            out.rmdir()                  # checked empty above
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return release
