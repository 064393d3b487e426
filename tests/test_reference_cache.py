"""grader/reference_cache.py: reference results computed once per machine, and equal bit for bit to a fresh run."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

TOY = """
import sys
from pathlib import Path
import torch
from llmstudy.grader import reference_cache
torch.set_num_threads(int(sys.argv[2]))
reference_cache.location = lambda: Path(sys.argv[1]) / reference_cache.location_key()
log = Path(sys.argv[1]) / "computed.log"

@reference_cache.per_machine
def oracle(prompt: str, n: int):
    with log.open("a") as f:
        f.write(prompt + "\\n")
    return torch.arange(n) * len(prompt)

print(oracle("cat", 3).tolist(), oracle("dog", 2).tolist())
"""


def run_toy(folder: Path, threads: int) -> str:
    proc = subprocess.run([sys.executable, "-c", TOY, str(folder), str(threads)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_a_second_process_reads_the_results_and_a_new_key_recomputes(tmp_path):
    first = run_toy(tmp_path, threads=1)
    assert first == "[0, 3, 6] [0, 3]"
    assert run_toy(tmp_path, threads=1) == first                     # another process: from disk
    assert (tmp_path / "computed.log").read_text().split() == ["cat", "dog"]
    assert run_toy(tmp_path, threads=2) == first                     # another thread count: another key
    assert (tmp_path / "computed.log").read_text().split() == ["cat", "dog", "cat", "dog"]


def test_the_cached_generate_oracle_equals_a_fresh_run_bit_for_bit(tmp_path, monkeypatch, one_thread):
    from llmstudy.grader import reference_cache
    monkeypatch.setattr(reference_cache, "location", lambda: tmp_path / reference_cache.location_key())
    spec = importlib.util.spec_from_file_location("grader_generation_cache", ROOT / "grader" / "tests" /
                                                  "test_generation.py")
    grader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grader)
    on_disk = grader._reference.__wrapped__            # per_machine's wrapper, below functools.cache
    fresh = on_disk.__wrapped__                         # the oracle itself
    case = (grader.PAIR, 6, None)
    stored = on_disk(*case)                             # computed, written
    assert any(tmp_path.rglob("output.pkl"))
    loaded = on_disk(*case)                             # read back
    assert torch.equal(loaded, stored) and torch.equal(loaded, fresh(*case))
    assert loaded.dtype == torch.long and loaded.shape[1] == grader.encode(*grader.PAIR).shape[1] + 6
