"""Backend choice of selective_scan / cross_scan / cross_merge: argument, env var, device, errors."""

from __future__ import annotations

import types

import pytest
import torch

import adaptor_peft.kernels.dispatch as K
from adaptor_peft.kernels import dispatch

ENV = "ADAPTOR_PEFT_SCAN"


def _inputs():
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    A, B, C = (
        -torch.rand(4, 1, generator=g),
        torch.randn(1, 2, 1, 6, generator=g),
        torch.randn(1, 2, 1, 6, generator=g),
    )
    return u, delta, A, B, C


@pytest.fixture
def spies(monkeypatch):
    """Replace each backend by a recorder so the test sees which one ran and with what."""
    calls = []

    def rec(name):
        def fn(*args, **kwargs):
            calls.append((name, args, kwargs))
            return name

        return fn

    monkeypatch.setattr(dispatch, "selective_scan_ref", rec("ref"))
    monkeypatch.setattr(dispatch, "selective_scan_torch", rec("torch"))
    fake_scan = types.SimpleNamespace(selective_scan_triton=rec("triton"))
    fake_cross = types.SimpleNamespace(
        cross_scan_triton=rec("triton_cs"), cross_merge_triton=rec("triton_cm")
    )
    monkeypatch.setitem(dispatch._triton_cache, "scan", fake_scan)
    monkeypatch.setitem(dispatch._triton_cache, "cross", fake_cross)
    monkeypatch.delenv(ENV, raising=False)
    return calls


def test_cpu_default_is_torch_and_arguments_pass_through(spies):
    u, delta, A, B, C = _inputs()
    D, bias = torch.ones(4), torch.zeros(4)
    assert K.selective_scan(u, delta, A, B, C, D, bias, True, True, False) == "torch"
    name, args, _ = spies[-1]
    assert name == "torch" and args[5] is D and args[6] is bias and args[7:] == (True, True, False)
    assert dispatch.resolve_backend(None, u) == "torch"


def test_env_override_and_explicit_argument_wins(spies, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the spies take CPU tensors, also on a CUDA machine
    x = _inputs()
    monkeypatch.setenv(ENV, "ref")
    assert K.selective_scan(*x) == "ref"
    monkeypatch.setenv(ENV, " Triton ")
    assert K.selective_scan(*x) == "triton"
    assert K.selective_scan(*x, backend="torch") == "torch"
    assert [c[0] for c in spies] == ["ref", "triton", "torch"]


def test_cross_scan_merge_dispatch(spies, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the spies take CPU tensors, also on a CUDA machine
    x = torch.randn(2, 3, 4, 5)
    ys = torch.randn(2, 4, 3, 4, 5)
    assert torch.equal(K.cross_scan(x), K.cross_scan_ref(x))
    assert torch.equal(K.cross_merge(ys, backend="ref"), K.cross_merge_ref(ys))
    assert K.cross_scan(x, channel_first=False, backend="triton") == "triton_cs"
    assert spies[-1][2] == {"channel_first": False}
    monkeypatch.setenv(ENV, "triton")
    assert K.cross_merge(ys) == "triton_cm"


def test_unknown_backend_errors(monkeypatch):
    x = _inputs()
    with pytest.raises(ValueError, match=r"unknown selective-scan backend 'cuda'.*backend argument"):
        K.selective_scan(*x, backend="cuda")
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match=r"'fast'.*ADAPTOR_PEFT_SCAN"):
        K.selective_scan(*x)
    with pytest.raises(ValueError, match="'fast'"):
        K.cross_scan(torch.randn(1, 2, 3, 3))


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(ENV, raising=False)
    x = _inputs()
    with pytest.raises(
        RuntimeError, match=r"backend 'triton'.*cannot run on cpu tensors.*TRITON_INTERPRET=1"
    ):
        K.selective_scan(*x, backend="triton")
    monkeypatch.setenv(ENV, "triton")
    with pytest.raises(RuntimeError, match=r"ADAPTOR_PEFT_SCAN.*cannot run on cpu"):
        K.cross_merge(torch.randn(1, 4, 2, 3, 3))
    assert K.available_backends("cpu") == ["ref", "torch"]


def test_triton_import_failure_names_backend_and_module(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(dispatch, "_triton_cache", {})
    monkeypatch.setitem(dispatch._TRITON_MODULES, "scan", "adaptor_peft.kernels.no_such_triton_module")
    with pytest.raises(
        RuntimeError,
        match=r"backend 'triton' is unavailable: importing "
        r"adaptor_peft\.kernels\.no_such_triton_module failed",
    ):
        K.selective_scan(*_inputs(), backend="triton")
    assert "triton" not in K.available_backends("cpu")


def test_real_backends_agree_through_dispatch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    x = [t.double() for t in _inputs()]
    y_torch = K.selective_scan(*x, delta_softplus=True)
    y_ref = K.selective_scan(*x, delta_softplus=True, backend="ref")
    assert torch.allclose(y_torch, y_ref, rtol=1e-12, atol=1e-12)
    from adaptor_peft.kernels.scan_torch import selective_scan_torch

    assert dispatch.selective_scan_torch is selective_scan_torch


def test_package_modules_do_not_import_triton_at_top_level():
    """Importing the package must never need Triton: only dispatch imports it, lazily, on demand."""
    import ast
    from pathlib import Path

    root = Path(K.__file__).parent
    for name in ("dispatch", "scan_torch", "scan_ref", "cross_scan_torch", "cross_scan_ref"):
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("triton" in m for m in mods), f"{name}.py imports {mods} at module level"


def test_triton_through_dispatch_matches_ref(monkeypatch):
    """End to end on the real Triton kernels (interpreter on CPU): dispatch routes and results agree."""
    monkeypatch.delenv(ENV, raising=False)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not dispatch._interpreter_on():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    try:
        dispatch._load_triton("scan")
        dispatch._load_triton("cross")
    except RuntimeError as exc:
        pytest.skip(f"Triton kernels not importable here: {exc}")
    u, delta, A, B, C = (t.to(dev) for t in _inputs())
    y = K.selective_scan(u, delta, A, B, C, delta_softplus=True, backend="triton")
    ref = K.selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
    assert (y - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    x = torch.randn(1, 2, 3, 4, device=dev)
    assert torch.equal(K.cross_scan(x, backend="triton"), K.cross_scan_ref(x))
