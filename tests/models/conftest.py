"""Fixtures for the VMamba model tests: conformance weights, io tensors and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="session")
def manifest(conformance_dir: Path) -> dict:
    """tests/data/conformance/manifest.json."""
    return json.loads((conformance_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def released_keys(conformance_dir: Path) -> dict:
    """tests/data/conformance/released_variants_keys.json."""
    return json.loads((conformance_dir / "released_variants_keys.json").read_text())


@pytest.fixture(scope="session")
def v05_file(conformance_dir: Path) -> Path:
    """Weights of the small v05_noz / ln2d conformance model (the test_vmamba layout)."""
    return conformance_dir / "small_v05noz_ln2d.safetensors"


@pytest.fixture(scope="session")
def v0_file(conformance_dir: Path) -> Path:
    """Weights of the small vanilla v0 / ln conformance model."""
    return conformance_dir / "small_v0_ln.safetensors"


@pytest.fixture(scope="session")
def v05_io(conformance_dir: Path) -> dict[str, torch.Tensor]:
    """Reference inputs/logits/features of the small v05_noz model."""
    return load_file(str(conformance_dir / "small_v05noz_ln2d_io.safetensors"))


@pytest.fixture(scope="session")
def v0_io(conformance_dir: Path) -> dict[str, torch.Tensor]:
    """Reference inputs/logits/features of the small v0 model."""
    return load_file(str(conformance_dir / "small_v0_ln_io.safetensors"))
