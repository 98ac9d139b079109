"""Training tests use tiny models: one intra-op thread is as fast as two there, and it avoids OpenMP
spin-waiting when the machine is busy (2 threads on an oversubscribed 2-core box are ~10x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
