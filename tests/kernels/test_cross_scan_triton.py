"""Triton cross-scan / cross-merge: bit-exact against the references, forward and backward."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adaptor_peft.kernels.cross_scan_ref import cross_merge_ref, cross_scan_ref
from adaptor_peft.kernels.cross_scan_triton import _cross_scan_kernel, cross_merge_triton, cross_scan_triton
from adaptor_peft.kernels.triton_utils import is_interpreted

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not is_interpreted(_cross_scan_kernel):
    pytest.skip("no CUDA and TRITON_INTERPRET is not set", allow_module_level=True)

SHAPES = [(2, 3, 4, 5), (1, 5, 7, 3), (2, 4, 6, 6), (1, 2, 1, 9), (1, 3, 33, 2)]  # H != W, H = 1, odd sizes
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def rand(*shape, dtype=torch.float32):
    return (torch.randn(*shape) * 10).to(dtype).to(DEVICE)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_scan_and_merge_exact(shape, dtype):
    x = rand(*shape, dtype=dtype)
    out = cross_scan_triton(x)
    assert out.dtype == dtype and out.shape == (shape[0], 4, shape[1], shape[2] * shape[3])
    assert torch.equal(out, cross_scan_ref(x))
    ys = rand(shape[0], 4, *shape[1:], dtype=dtype)
    merged = cross_merge_triton(ys)
    assert merged.dtype == dtype
    assert torch.equal(merged, cross_merge_ref(ys))


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_channel_last_and_strided_inputs(shape):
    x = rand(*shape)
    x_last = x.permute(0, 2, 3, 1).contiguous()
    assert torch.equal(cross_scan_triton(x_last, channel_first=False), cross_scan_ref(x))
    x_view = x_last.permute(0, 3, 1, 2)  # channel-first view of channel-last storage
    assert torch.equal(cross_scan_triton(x_view), cross_scan_ref(x))
    ys = rand(shape[0], 4, shape[1], shape[3], shape[2]).transpose(3, 4)  # non-contiguous (B,4,D,H,W)
    assert torch.equal(cross_merge_triton(ys), cross_merge_ref(ys))


@pytest.mark.parametrize("channel_first", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 5, 3)])
def test_gradients_match_reference_autograd(shape, channel_first):
    batch, d, h, w = shape
    x = rand(*(shape if channel_first else (batch, h, w, d))).requires_grad_()
    g = rand(batch, 4, d, h * w)
    (dx_t,) = torch.autograd.grad(cross_scan_triton(x, channel_first), x, g)
    (dx_r,) = torch.autograd.grad(cross_scan_ref(x, channel_first), x, g)
    assert dx_t.shape == x.shape
    assert torch.equal(dx_t, dx_r)

    ys = rand(batch, 4, d, h, w).requires_grad_()
    gm = rand(batch, d, h * w)
    (dys_t,) = torch.autograd.grad(cross_merge_triton(ys), ys, gm)
    (dys_r,) = torch.autograd.grad(cross_merge_ref(ys), ys, gm)
    assert torch.equal(dys_t, dys_r)


def test_float64_gradcheck():
    x = rand(1, 1, 2, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(cross_scan_triton, (x,))
    ys = rand(1, 4, 1, 2, 2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(cross_merge_triton, (ys,))


def test_merge_of_scan_is_four_times_input():
    x = rand(2, 3, 5, 7)
    merged = cross_merge_triton(cross_scan_triton(x).view(2, 4, 3, 5, 7))
    assert torch.equal(merged, (4 * x).flatten(2))


def test_conformance_primitives(conformance_dir):
    d = load_file(str(conformance_dir / "primitives.safetensors"))
    assert torch.equal(cross_scan_triton(d["cs.x_bchw"].to(DEVICE)).cpu(), d["cs.scan_out_b4cl"])
    merged = cross_merge_triton(d["cs.merge_in_b4chw"].to(DEVICE)).cpu()
    assert torch.allclose(merged, d["cs.merge_out_bcl"], rtol=0, atol=1e-6)
    assert torch.equal(merged, cross_merge_ref(d["cs.merge_in_b4chw"]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(2, 3, 4\)"):
        cross_scan_triton(rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"ys must be \(B, 4, D, H, W\), got shape \(1, 3, 2, 2, 2\)"):
        cross_merge_triton(rand(1, 3, 2, 2, 2))
