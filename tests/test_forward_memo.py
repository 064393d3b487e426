"""Forward passes shared across the submissions a worker grades (grader/forward_memo.py, used by
grader/model_server.py): a later submission's identical steps cost no forward pass, and what it gets is bit for bit
what its own computation would have given, because the key is the computation path and not the token ids."""
from __future__ import annotations

import pytest
import torch

from llmstudy.grader.forward_memo import ForwardMemo
from llmstudy.grader.model_server import ModelServer
from llmstudy.grader.sandbox import isolation_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def ids_of(smollm2, *prompts: str) -> torch.Tensor:
    return torch.tensor([smollm2[1](p)["input_ids"] for p in prompts])


def naive_greedy(server: ModelServer, ids: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """A learner's naive loop as the server sees it: the whole sequence every step. The logits of each call."""
    seen = []
    for _ in range(steps):
        logits = server.forward("smollm2", ids)[0]                       # [B, L, V]
        seen.append(logits)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seen


def test_a_second_submission_computes_nothing_and_gets_its_own_numbers_exactly(smollm2):
    memo = ForwardMemo()
    ids = ids_of(smollm2, "I opened the door and saw", "A cat is an animal that")
    first, second = ModelServer("cpu", memo=memo), ModelServer("cpu", memo=memo)
    alone = ModelServer("cpu", memo=None)                                 # what the second would compute itself
    got_first = naive_greedy(first, ids, 5)
    got_second = naive_greedy(second, ids, 5)
    want = naive_greedy(alone, ids, 5)
    assert first.stats.runs == 5 and second.stats.runs == 0 and second.stats.memo_hits == 5
    assert all(torch.equal(g, w) for g, w in zip(got_second, want))       # bit for bit, not within a tolerance
    assert all(torch.equal(g, w) for g, w in zip(got_first, want))


def test_the_same_ids_by_another_path_are_computed_again(smollm2):
    """A step-by-step run and a one-call run of the same ids differ by ~1e-5: the second must not get the first's."""
    memo = ForwardMemo()
    ids = ids_of(smollm2, "The capital of France is")
    stepwise = ModelServer("cpu", memo=memo)
    naive_greedy(stepwise, ids, 4)
    whole = torch.cat([ids, stepwise.forward("smollm2", ids)[0][:, -1:].argmax(-1)], dim=1)   # prompt + 1 token
    at_once = ModelServer("cpu", memo=memo)
    got = at_once.forward("smollm2", whole)[0]
    assert at_once.stats.runs == 1 and at_once.stats.memo_hits == 0
    assert torch.equal(got, ModelServer("cpu", memo=None).forward("smollm2", whole)[0])


def test_a_branch_from_a_cropped_cache_is_memoised_bit_for_bit(smollm2):
    """Two sampled continuations of one prompt: the second call branches from a crop of the first's cache."""
    memo = ForwardMemo()
    ids = ids_of(smollm2, "He bought a")

    def run(server):
        a = server.forward("smollm2", torch.cat([ids, torch.tensor([[1000, 2000]])], dim=1))[0]
        b = server.forward("smollm2", torch.cat([ids, torch.tensor([[3000]])], dim=1))[0]
        return a, b

    run(ModelServer("cpu", memo=memo))
    again = ModelServer("cpu", memo=memo)
    got = run(again)
    want = run(ModelServer("cpu", memo=None))
    assert again.stats.runs == 0 and again.stats.memo_hits == 2
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_memoised_cache_is_never_grown_in_place(smollm2):
    """A later submission that extends a memoised step must leave the memo's copy as it was: a third one that
    branches off after the memoised steps computes on that copy."""
    memo = ForwardMemo()
    ids = ids_of(smollm2, "He bought a")

    def two_greedy_then_other(server):
        seen = naive_greedy(server, ids, 2)
        so_far = torch.cat([ids, seen[0][:, -1].argmax(-1, keepdim=True), seen[1][:, -1].argmax(-1, keepdim=True)], 1)
        return seen + [server.forward("smollm2", torch.cat([so_far, torch.tensor([[1234]])], dim=1))[0]]

    naive_greedy(ModelServer("cpu", memo=memo), ids, 2)
    longer = ModelServer("cpu", memo=memo)
    naive_greedy(longer, ids, 4)                                          # 2 hits, then 2 steps grown from a hit
    assert longer.stats.memo_hits == 2 and longer.stats.runs == 2
    other = ModelServer("cpu", memo=memo)
    got = two_greedy_then_other(other)
    assert other.stats.memo_hits == 2 and other.stats.runs == 1
    assert all(torch.equal(g, w) for g, w in zip(got, two_greedy_then_other(ModelServer("cpu", memo=None))))


def test_the_memo_stays_within_its_bytes(smollm2):
    ids = ids_of(smollm2, "He bought a")
    one_step = 49152 * 4 * ids.shape[1]                                  # logits of the prompt alone
    memo = ForwardMemo(max_bytes=3 * one_step)
    for first in range(6):                                               # six different prompts' prefills
        ModelServer("cpu", memo=memo).forward("smollm2", torch.cat([ids, torch.tensor([[100 + first]])], dim=1))
        assert memo._bytes <= memo.max_bytes
    assert 0 < len(memo._items) < 6


def test_a_saved_memo_loads_bit_for_bit_and_grows_like_the_original(smollm2, tmp_path):
    """save() then load() into another memo (another worker, a later run): its entries answer the same calls, and
    steps grown on a loaded cache equal a run without any memo bit for bit."""
    saved, ids = ForwardMemo(), ids_of(smollm2, "I opened the door and saw", "A cat is an animal that")
    naive_greedy(ModelServer("cpu", memo=saved), ids, 4)
    saved.save(tmp_path / "memo.safetensors", saved.keys())
    loaded = ForwardMemo()
    assert loaded.load(tmp_path / "memo.safetensors") == 4
    later = ModelServer("cpu", memo=loaded)
    got = naive_greedy(later, ids, 6)                                     # 4 loaded, 2 grown on the 4th's cache
    assert later.stats.memo_hits == 4 and later.stats.runs == 2
    assert all(torch.equal(g, w) for g, w in zip(got, naive_greedy(ModelServer("cpu", memo=None), ids, 6)))


@pytest.mark.skipif(isolation_problem() is not None, reason=f"sandbox unavailable here: {isolation_problem()}")
def test_the_references_grade_warms_every_workers_memo_once_per_machine(smollm2, tmp_path, monkeypatch):
    """warm_memo() builds the file from the reference's own grade, a later worker loads it, and then a sandboxed
    correct submission of generation makes the model compute nothing; an unreadable file is built again."""
    from llmstudy.catalog import by_id
    from llmstudy.grader import reference_cache, runner
    from llmstudy.grader.forward_memo import PER_WORKER
    from llmstudy.grader.sandbox import SandboxWorker

    monkeypatch.setattr(reference_cache, "memo_file", lambda: tmp_path / "memo.safetensors")
    PER_WORKER.clear()
    assert reference_cache.warm_memo() == "built" and (tmp_path / "memo.safetensors").is_file()
    PER_WORKER.clear()
    assert reference_cache.warm_memo() == "loaded" and PER_WORKER.keys()
    with SandboxWorker() as worker:
        with worker.open("generation", by_id("generation").solution_path.read_text(), "04_generation.py") as sub:
            result = runner.grade("generation", sub)
    assert result.score == result.max_score > 0
    assert sub.server.stats.runs == 0 and sub.server.stats.memo_hits > 0, sub.server.stats
    (tmp_path / "memo.safetensors").write_bytes(b"not a safetensors file")
    PER_WORKER.clear()
    assert reference_cache.warm_memo() == "built"
