"""Adaptor-T read-out: fused torch path == naive loop (float64), gradients, boundary handling."""

from __future__ import annotations

import pytest
import torch

from adaptor_peft.kernels.adaptor_t_ref import adaptor_t_readout_ref, lerp_zero_pad
from adaptor_peft.kernels.adaptor_t_torch import adaptor_t_readout_torch

F64 = torch.float64


def _operands(batch, groups, d_inner, n, length, heads, points, spread=4.0, relative=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, groups * d_inner, n, length, dtype=F64, generator=g)
    if relative:
        offsets = torch.randn(batch, groups * heads, points, length, dtype=F64, generator=g) * spread
    else:  # absolute positions, some outside [0, L-1]
        offsets = torch.rand(batch, groups * heads, points, length, dtype=F64, generator=g) * (length + 4) - 2
    weights = torch.softmax(torch.randn(batch, groups * heads, points, length, dtype=F64, generator=g), 2)
    C = torch.randn(batch, groups, n, length, dtype=F64, generator=g)
    gamma = torch.randn(groups * d_inner, dtype=F64, generator=g)
    return h, offsets, weights, C, gamma


CASES = [
    # batch, groups, d_inner, n, length, heads, points, relative
    (2, 4, 6, 1, 12, 2, 3, True),  # N = 1 fast path
    (1, 4, 4, 3, 10, 2, 2, True),  # N > 1, batch 1
    (2, 4, 6, 2, 15, 3, 2, False),  # absolute positions, rectangular 3x5 grid
    (2, 1, 4, 1, 7, 1, 1, True),  # one direction, one head, one point
    (1, 4, 4, 1, 1, 2, 2, True),  # L = 1: every neighbour but the token itself is outside
]


@pytest.mark.parametrize("case", CASES)
def test_fast_matches_naive_loop_forward_and_backward(case):
    batch, groups, d_inner, n, length, heads, points, relative = case
    ops = _operands(batch, groups, d_inner, n, length, heads, points, relative=relative)
    fast_in = [t.clone().requires_grad_() for t in ops]
    ref_in = [t.clone().requires_grad_() for t in ops]
    fast = adaptor_t_readout_torch(*fast_in, relative=relative)
    ref = adaptor_t_readout_ref(*ref_in, relative=relative)
    assert fast.shape == (batch, groups * d_inner, length)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(ref)
    g_fast = torch.autograd.grad(fast, fast_in, grad)
    g_ref = torch.autograd.grad(ref, ref_in, grad)
    for name, a, b in zip(("h", "offsets", "weights", "C", "gamma"), g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("case", [c for c in CASES if c[3] == 1])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_no_grad_path_matches_naive_loop(case, dtype):
    # Inference (no grad, N = 1) takes a separate per-sample path through small reused buffers.
    batch, groups, d_inner, n, length, heads, points, relative = case
    ops = _operands(batch, groups, d_inner, n, length, heads, points, relative=relative)
    ops = [t.to(dtype) for t in ops]
    with torch.no_grad():
        fast = adaptor_t_readout_torch(*ops, relative=relative)
    ref = adaptor_t_readout_ref(*[t.double() for t in ops], relative=relative)
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(fast.double(), ref, atol=tol, rtol=tol)


GRADCHECK_CASES = [(1, 4, 4, 1, 6, 2, 2, True), (1, 2, 2, 2, 6, 1, 2, True), (1, 2, 4, 1, 6, 2, 2, False)]


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_fast_path_gradcheck(case):
    batch, groups, d_inner, n, length, heads, points, relative = case
    ops = [
        t.requires_grad_()
        for t in _operands(batch, groups, d_inner, n, length, heads, points, relative=relative)
    ]
    fn = lambda *x: adaptor_t_readout_torch(*x, relative=relative)
    assert torch.autograd.gradcheck(fn, ops, eps=1e-6, atol=1e-7, fast_mode=True)


def test_static_offsets_broadcast_view():
    # static selection passes (S, K) offsets expanded over batch and tokens (stride 0): same result
    h, _, weights, C, gamma = _operands(2, 4, 4, 1, 9, 2, 3)
    static = torch.tensor([[-1.5, 0.25, 2.0], [-3.0, 1.0, 7.5]], dtype=F64)
    expanded = static[None, None].expand(2, 4, 2, 3)[..., None].expand(2, 4, 2, 3, 9).reshape(2, 8, 3, 9)
    fast = adaptor_t_readout_torch(h, expanded, weights, C, gamma)
    ref = adaptor_t_readout_ref(h, expanded.contiguous(), weights, C, gamma)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-12)


def test_positions_outside_sequence_read_zero():
    h, _, weights, C, gamma = _operands(1, 4, 4, 1, 6, 2, 2)
    far = torch.full((1, 8, 2, 6), 100.0, dtype=F64)
    assert adaptor_t_readout_torch(h, far, weights, C, gamma).abs().max().item() == 0.0
    assert adaptor_t_readout_torch(h, -far, weights, C, gamma).abs().max().item() == 0.0
    # half a step before the start reads half of h[0] (zero padding, not clamping)
    seq = torch.tensor([2.0, 4.0, 8.0], dtype=F64)
    vals = lerp_zero_pad(seq.expand(5, 3), torch.tensor([-0.5, 0.5, 2.25, 2.5, 3.0], dtype=F64))
    torch.testing.assert_close(vals, torch.tensor([1.0, 3.0, 6.0, 4.0, 0.0], dtype=F64))


def test_integer_offsets_are_exact_shifts():
    # offset +1 on every token with one point: m_i = h_{i+1}; read-out = gamma * C_i * h_{i+1}
    h, _, _, C, gamma = _operands(1, 4, 4, 1, 8, 1, 1)
    ones = torch.ones(1, 4, 1, 8, dtype=F64)
    out = adaptor_t_readout_torch(h, ones, ones, C, gamma)
    shifted = torch.cat([h[..., 0, 1:], torch.zeros_like(h[..., 0, :1])], -1)
    expected = gamma[:, None] * C[:, :, 0].repeat_interleave(4, 1) * shifted
    torch.testing.assert_close(out, expected, atol=1e-14, rtol=0)


def test_offset_gradient_is_the_interpolation_slope():
    # d out / d offset at a fractional position equals gamma * C * c * (h[j+1] - h[j])
    h, _, _, C, gamma = _operands(1, 1, 2, 1, 5, 1, 1)
    off = torch.full((1, 1, 1, 5), 0.3, dtype=F64, requires_grad=True)
    w = torch.ones(1, 1, 1, 5, dtype=F64)
    out = adaptor_t_readout_torch(h, off, w, C, gamma)
    (g,) = torch.autograd.grad(out.sum(), off)
    hp = torch.cat([h[0, :, 0], torch.zeros(2, 1, dtype=F64)], -1)
    slope = (hp[:, 1:6] - hp[:, 0:5]) * gamma[:, None] * C[0, 0]
    torch.testing.assert_close(g[0, 0, 0], slope.sum(0), atol=1e-12, rtol=0)
    assert g.abs().min().item() > 0


def test_float32_matches_float64():
    ops = _operands(2, 4, 8, 1, 20, 2, 4)
    out64 = adaptor_t_readout_torch(*ops)
    out32 = adaptor_t_readout_torch(*[t.float() for t in ops])
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=1e-5)


def test_shape_errors_name_the_operand():
    h, off, w, C, gamma = _operands(1, 4, 4, 1, 6, 2, 2)
    with pytest.raises(ValueError, match="gamma"):
        adaptor_t_readout_torch(h, off, w, C, gamma[:-1])
    with pytest.raises(ValueError, match="weights"):
        adaptor_t_readout_torch(h, off, w[..., :-1], C, gamma)
    with pytest.raises(ValueError, match="heads do not divide"):
        adaptor_t_readout_torch(h, off.repeat(1, 3, 1, 1)[:, :12], w.repeat(1, 3, 1, 1)[:, :12], C, gamma)
