"""Shared test fixtures: conformance data location, deterministic seeds, CPU Triton interpreter."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run on CPU through the interpreter in tests; the flag must be set before any
# kernel module is imported (triton reads it when a kernel is decorated).
try:
    import torch as _torch

    _HAS_CUDA = _torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE_DIR = REPO_ROOT / "tests" / "data" / "conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """Directory holding the official-VMamba conformance data (tests/data/conformance, see its README)."""
    if not CONFORMANCE_DIR.is_dir():
        pytest.fail(f"conformance data not found at {CONFORMANCE_DIR}")
    return CONFORMANCE_DIR


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _single_thread():
    """Test models are tiny: one intra-op thread is as fast, and far steadier on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
