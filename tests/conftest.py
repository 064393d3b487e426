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
