"""Which implementation each backend name routes to, and the device default (no GPU needed).

`cross_merge_torch` and `cross_merge_ref` give the same numbers by design, so only a spy can tell which
one ran; `resolve_backend` reads nothing of a tensor but `is_cuda` (and `device` in its errors), so a
stand-in object is a CUDA tensor as far as the default goes.
"""

from __future__ import annotations

import types

import pytest
import torch

from adaptor_peft.kernels import dispatch

ENV = "ADAPTOR_PEFT_SCAN"


@pytest.fixture
def calls(monkeypatch):
    """Every cross-scan / cross-merge implementation replaced by a recorder of (name, args, kwargs)."""
    seen = []

    def rec(name):
        def fn(*args, **kwargs):
            seen.append((name, args, kwargs))
            return name

        return fn

    for name in ("cross_scan_torch", "cross_merge_torch", "cross_scan_ref", "cross_merge_ref"):
        monkeypatch.setattr(dispatch, name, rec(name))
    fake = types.SimpleNamespace(
        cross_scan_triton=rec("cross_scan_triton"), cross_merge_triton=rec("cross_merge_triton")
    )
    monkeypatch.setitem(dispatch._triton_cache, "cross", fake)
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets the "triton" name through for CPU tensors
    return seen


@pytest.mark.parametrize(
    ("backend", "merge_impl"),
    [("torch", "cross_merge_torch"), ("ref", "cross_merge_ref"), ("triton", "cross_merge_triton")],
)
def test_cross_merge_runs_the_named_backend(calls, backend, merge_impl):
    ys = torch.zeros(1, 4, 2, 3, 3)
    assert dispatch.cross_merge(ys, backend=backend) == merge_impl
    assert len(calls) == 1 and calls[0][0] == merge_impl and calls[0][1][0] is ys


@pytest.mark.parametrize(
    ("backend", "scan_impl"),
    [("torch", "cross_scan_torch"), ("ref", "cross_scan_ref"), ("triton", "cross_scan_triton")],
)
def test_cross_scan_runs_the_named_backend(calls, backend, scan_impl):
    x = torch.zeros(1, 2, 3, 3)
    assert dispatch.cross_scan(x, channel_first=False, backend=backend) == scan_impl
    assert [c[0] for c in calls] == [scan_impl]
    assert calls[0][1][0] is x and calls[0][2] == {"channel_first": False}


def test_cpu_tensors_default_to_torch_for_cross_merge(calls):
    """No argument, no env var, a CPU tensor: the torch implementation (not the slower reference)."""
    ys = torch.zeros(1, 4, 2, 3, 3)
    assert dispatch.cross_merge(ys) == "cross_merge_torch"
    assert dispatch.cross_scan(torch.zeros(1, 2, 3, 3)) == "cross_scan_torch"


def test_cuda_tensors_default_to_triton(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    on_gpu = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    on_cpu = types.SimpleNamespace(is_cuda=False, device=torch.device("cpu"))
    assert dispatch.resolve_backend(None, on_gpu) == "triton"
    assert dispatch.resolve_backend(None, on_cpu) == "torch"
    # the default only: an explicit argument or the env var still wins on CUDA
    assert dispatch.resolve_backend("torch", on_gpu) == "torch"
    monkeypatch.setenv(ENV, "ref")
    assert dispatch.resolve_backend(None, on_gpu) == "ref"
