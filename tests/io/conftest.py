"""Fixtures for adaptor-file tests."""

from __future__ import annotations

import pytest
from io_toy import TOY_API

import adaptor_peft.io as aio


@pytest.fixture
def toy_api(monkeypatch):
    """Route adaptor_peft.io to the toy adaptor backend."""
    monkeypatch.setattr(aio, "_adaptors_api", lambda: TOY_API)
    return TOY_API
