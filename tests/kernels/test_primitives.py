"""Scan and cross-scan/merge against the official-VMamba test vectors (primitives.safetensors)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adaptor_peft.kernels.cross_scan_ref import cross_merge_ref, cross_scan_ref
from adaptor_peft.kernels.cross_scan_torch import cross_merge_torch, cross_scan_torch
from adaptor_peft.kernels.dispatch import cross_merge, cross_scan, selective_scan


@pytest.fixture(scope="module")
def prim(conformance_dir):
    return load_file(str(conformance_dir / "primitives.safetensors"))


def _tol(ref: torch.Tensor) -> float:
    return 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("backend", ["ref", "torch"])
def test_scan_softplus_case(prim, backend):
    p = {k[3:]: v for k, v in prim.items() if k.startswith("ss.")}
    y = selective_scan(
        p["u"],
        p["delta"],
        p["A"],
        p["B"],
        p["C"],
        p["D"],
        p["delta_bias"],
        delta_softplus=True,
        backend=backend,
    )
    ref = p["out_softplus"]
    assert y.dtype == torch.float32 and y.shape == ref.shape == (2, 32, 37)
    assert (y - ref).abs().max().item() <= _tol(ref)


@pytest.mark.parametrize("backend", ["ref", "torch"])
def test_scan_plain_case(prim, backend):
    p = {k[3:]: v for k, v in prim.items() if k.startswith("ss.")}
    y = selective_scan(p["u"], p["delta"].abs(), p["A"], p["B"], p["C"], backend=backend)
    ref = p["out_nosoftplus_nobias_noD"]
    assert (y - ref).abs().max().item() <= _tol(ref)


@pytest.mark.parametrize("backend", ["ref", "torch"])
def test_cross_scan_and_merge(prim, backend):
    x = prim["cs.x_bchw"]
    out = cross_scan(x, channel_first=True, backend=backend)
    assert torch.equal(out, prim["cs.scan_out_b4cl"])
    assert torch.equal(cross_scan(x.permute(0, 2, 3, 1), channel_first=False, backend=backend), out)
    merged = cross_merge(prim["cs.merge_in_b4chw"], backend=backend)
    assert torch.equal(merged, prim["cs.merge_out_bcl"])


def test_cross_merge_is_adjoint_of_cross_scan():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(2, 4, 3, 20, dtype=torch.float64)
    (g,) = torch.autograd.grad((cross_scan_ref(x) * ys).sum(), x)
    assert torch.allclose(g.flatten(2), cross_merge_ref(ys.view(2, 4, 3, 4, 5)), atol=1e-12)
    assert torch.equal(
        cross_merge_ref(cross_scan_ref(x.detach()).view(2, 4, 3, 4, 5)), 4 * x.detach().flatten(2)
    )


@pytest.mark.parametrize("hw", [(4, 5), (1, 7), (3, 3)])
def test_torch_cross_ops_equal_reference_with_grads(hw):
    h, w = hw
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(2, 4, 3, h, w, dtype=torch.float64, requires_grad=True)
    gs, gm = torch.randn(2, 4, 3, h * w, dtype=torch.float64), torch.randn(2, 3, h * w, dtype=torch.float64)
    for channel_first in (True, False):
        xi = x if channel_first else x.permute(0, 2, 3, 1)
        a, b = (
            cross_scan_torch(xi, channel_first=channel_first),
            cross_scan_ref(xi, channel_first=channel_first),
        )
        assert torch.equal(a, b)
        assert torch.equal(*(torch.autograd.grad(o, x, gs)[0] for o in (a, b)))
    a, b = cross_merge_torch(ys), cross_merge_ref(ys)
    assert torch.equal(a, b) and a.is_contiguous()
    assert torch.equal(*(torch.autograd.grad(o, ys, gm)[0] for o in (a, b)))
    assert torch.autograd.gradcheck(cross_merge_torch, (ys,)) and torch.autograd.gradcheck(
        cross_scan_torch, (x,)
    )
    with pytest.raises(ValueError, match=r"\(B, 4, D, H, W\)"):
        cross_merge_torch(ys[:, :3])
