"""Fixtures for the adaptor tests: conformance models (built from their config metadata) and inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptor_peft.models import create_model

CONFORMANCE_MODELS = ("small_v05noz_ln2d", "small_v0_ln")


def build_conformance(conformance_dir: Path, name: str) -> torch.nn.Module:
    """The conformance model with its weights, in eval mode."""
    return create_model(conformance_dir / f"{name}.safetensors").eval()


@pytest.fixture
def build_conformance_model(conformance_dir: Path):  # noqa: ANN201
    """Factory fixture: name -> fresh conformance model (weights loaded, eval mode)."""
    return lambda name: build_conformance(conformance_dir, name)


@pytest.fixture(scope="session")
def conformance_io(conformance_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """name -> io tensors (inputs `sq.input` (1,3,64,64) and `rect.input` (2,3,48,80), logits)."""
    return {name: load_file(conformance_dir / f"{name}_io.safetensors") for name in CONFORMANCE_MODELS}


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests run tiny tensors: one intra-op thread avoids OpenMP hand-off costs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
