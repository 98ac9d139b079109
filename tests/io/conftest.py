"""Fixtures for adaptor-file tests."""

from __future__ import annotations

import pytest
from io_toy import TOY_API

from adaptor_peft.io import adaptor_file


@pytest.fixture
def toy_api(monkeypatch):
    """Route adaptor files to the toy adaptor backend (adaptor_file's documented seam)."""
    monkeypatch.setattr(adaptor_file, "adaptor_backend", lambda: TOY_API)
    return TOY_API
