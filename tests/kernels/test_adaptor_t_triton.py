"""Triton Adaptor-T read-out against the naive loop reference and the torch path's conventions.

CPU: the Triton interpreter (tiny shapes); GPU: CUDA. Forward and all five gradients are compared
in float64 (max abs error 1e-12 at unit-scale values) and in float32 (relative 1e-5 against the
float64 reference on the same inputs).
"""

from __future__ import annotations

import pytest
import torch

from adaptor_peft.kernels.adaptor_t_ref import adaptor_t_readout_ref
from adaptor_peft.kernels.adaptor_t_torch import readout_tokens, states_table
from adaptor_peft.kernels.adaptor_t_triton import _readout_fwd_kernel, _tiles, adaptor_t_readout_triton
from adaptor_peft.kernels.triton_utils import is_interpreted

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not is_interpreted(_readout_fwd_kernel):
    pytest.skip("no CUDA and TRITON_INTERPRET is not set", allow_module_level=True)

NAMES = ("h", "offsets", "weights", "C", "gamma")


def make_leaves(batch, groups, d_inner, n, length, heads, points, *, dtype=torch.float64, seed=0,
                spread=None, relative=True, token_major=False):  # fmt: skip
    """Leaf tensors in the layouts the module produces; returns (leaves, views in the kernel's shapes).

    Offsets reach beyond both ends of the sequence (spread ~ 0.7 L); weights/offsets are stored
    point-major (K, S, B, L, G) and C token-major, as x_proj and the predictor GEMM leave them.
    """
    gen = torch.Generator().manual_seed(seed)
    kd = groups * d_inner

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    if token_major:  # the torch scan's states: a (B, L, KD, N) table
        h_leaf = rnd(batch, length, kd, n)
        h = h_leaf.permute(0, 2, 3, 1)
    else:  # the Triton scan's states: contiguous channel-major
        h_leaf = rnd(batch, kd, n, length)
        h = h_leaf
    spread = 0.7 * length + 1 if spread is None else spread
    if relative:
        off_leaf = rnd(points, heads, batch, length, groups) * spread / 2
    else:
        off_leaf = torch.rand(points, heads, batch, length, groups, generator=gen, dtype=torch.float64)
        off_leaf = off_leaf * (length + 3) - 1.5
    w_leaf = torch.softmax(rnd(points, heads, batch, length, groups), dim=0) * 1.5
    C_leaf = rnd(batch, length, groups, n)
    gamma_leaf = rnd(kd)
    leaves = [t.to(dtype) for t in (h_leaf, off_leaf, w_leaf, C_leaf, gamma_leaf)]
    h = leaves[0].permute(0, 2, 3, 1) if token_major else leaves[0]
    views = [
        h,
        leaves[1].permute(2, 3, 4, 1, 0),  # (B, L, G, S, K)
        leaves[2].permute(2, 3, 4, 1, 0),
        leaves[3].permute(0, 2, 3, 1),  # (B, G, N, L)
        leaves[4],
    ]
    return leaves, views


def to_ref_layout(t):
    """(B, L, G, S, K) -> the reference's (B, G*S, K, L)."""
    b, length, g, s, k = t.shape
    return t.permute(0, 2, 3, 4, 1).reshape(b, g * s, k, length)


def run_both(leaves, build, relative=True, **tiles):
    """Kernel on `leaves` (moved to DEVICE) and float64 reference on a copy; outputs and leaf gradients."""
    tri = [t.detach().to(DEVICE).requires_grad_() for t in leaves]
    ref = [t.detach().double().requires_grad_() for t in leaves]
    tv, rv = build(tri), build(ref)
    out = adaptor_t_readout_triton(*tv, relative=relative, **tiles)
    exp = adaptor_t_readout_ref(rv[0], to_ref_layout(rv[1]), to_ref_layout(rv[2]), rv[3], rv[4], relative)
    cot = torch.randn(exp.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g_t = torch.autograd.grad((out * cot.to(out)).sum(), tri)
    g_r = torch.autograd.grad((exp * cot).sum(), ref)
    return out, exp, g_t, g_r


def views_of(token_major):
    def build(ls):
        h = ls[0].permute(0, 2, 3, 1) if token_major else ls[0]
        return [
            h,
            ls[1].permute(2, 3, 4, 1, 0),
            ls[2].permute(2, 3, 4, 1, 0),
            ls[3].permute(0, 2, 3, 1),
            ls[4],
        ]

    return build


def assert_close(out, exp, g_t, g_r, atol=1e-12, rtol=None):
    """float64: max abs error <= atol; float32 (rtol): max error <= rtol * max |reference| per tensor."""
    pairs = [("out", out, exp)] + [(f"d{n}", a, b) for n, a, b in zip(NAMES, g_t, g_r)]
    for name, a, b in pairs:
        assert a.shape == b.shape, name
        err = (a.detach().cpu().double() - b.detach()).abs().max().item()
        tol = atol if rtol is None else rtol * max(b.abs().max().item(), 1e-30)
        assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


# (batch, G, d_inner, N, L, S, K)
CASES = [
    (2, 4, 4, 1, 7, 2, 4),  # VMamba-like: 4 directions, 2 heads, 4 points, N = 1
    (1, 4, 6, 3, 35, 2, 3),  # N = 3, K = 3 (non powers of two), L = 35 (a 5x7 grid), batch 1
    (2, 1, 4, 2, 13, 1, 1),  # G = 1, S = 1, K = 1, N = 2
    (2, 2, 6, 2, 1, 3, 4),  # L = 1: every tap but token 0 is outside
    (1, 4, 8, 1, 37, 4, 4),  # L prime, 4 heads
]


@pytest.mark.parametrize("token_major", [False, True], ids=["channel_major", "token_major"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}G{}D{}N{}L{}S{}K{}".format(*c))
def test_matches_reference_float64(case, token_major):
    leaves, _ = make_leaves(*case, token_major=token_major, seed=sum(case))
    out, exp, g_t, g_r = run_both(leaves, views_of(token_major))
    assert out.dtype == torch.float64 and out.is_contiguous()
    assert_close(out, exp, g_t, g_r)


def test_offsets_land_outside_on_both_sides_and_get_a_gradient():
    """Positions beyond both ends read zero; the offset gradient is non-zero and matches the reference
    (the acceptance check: gradients flow to phi_p through the interpolation)."""
    leaves, views = make_leaves(2, 4, 4, 2, 9, 2, 4, spread=16.0, seed=11)
    pos = views[1] + torch.arange(9, dtype=torch.float64)[:, None, None, None]
    assert (pos < -1).any() and (pos > 9).any() and ((pos > 0) & (pos < 8)).any()
    out, exp, g_t, g_r = run_both(leaves, views_of(False))
    assert_close(out, exp, g_t, g_r)
    d_off = g_t[1]
    assert d_off.abs().max() > 0.1
    # positions outside [-1, L] get exactly zero gradient (both taps are padding)
    outside = ((pos < -1) | (pos > 9)).permute(4, 3, 0, 1, 2)  # the leaf's (K, S, B, L, G) layout
    assert torch.all(d_off.cpu()[outside] == 0)


def test_absolute_positions():
    leaves, _ = make_leaves(2, 4, 4, 2, 11, 2, 4, relative=False, seed=12)
    out, exp, g_t, g_r = run_both(leaves, views_of(False), relative=False)
    assert_close(out, exp, g_t, g_r)
    assert g_t[1].abs().max() > 0.1


def test_static_selection_expanded_offsets():
    """Offsets expand()ed from (G, S, K) learned parameters (zero batch/token strides), gamma expanded
    from one direction's (D,) vector: values and the summed gradients of the small leaves match."""
    batch, groups, d_inner, n, length, heads, points = 2, 4, 4, 2, 10, 2, 4
    gen = torch.Generator().manual_seed(13)
    leaves, _ = make_leaves(batch, groups, d_inner, n, length, heads, points, seed=13)
    leaves[1] = torch.randn(1, heads, points, generator=gen, dtype=torch.float64) * 4  # shared over G
    leaves[4] = torch.randn(1, d_inner, generator=gen, dtype=torch.float64)

    def build(ls):
        off = ls[1].expand(groups, heads, points).expand(batch, length, -1, -1, -1)
        gamma = ls[4].expand(groups, d_inner).reshape(-1)
        return [ls[0], off, ls[2].permute(2, 3, 4, 1, 0), ls[3].permute(0, 2, 3, 1), gamma]

    assert build(leaves)[1].stride()[:3] == (0, 0, 0)
    out, exp, g_t, g_r = run_both(leaves, build)
    assert_close(out, exp, g_t, g_r)


def test_float32_relative_tolerance():
    leaves, _ = make_leaves(2, 4, 8, 2, 19, 2, 4, dtype=torch.float32, seed=14)
    out, exp, g_t, g_r = run_both(leaves, views_of(False))
    assert out.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in g_t)
    assert_close(out, exp, g_t, g_r, rtol=1e-5)


def test_half_weights_and_C_compute_in_float32():
    """fp16 softmax weights and C (autocast outputs): fp32 result, gradients in each input's dtype."""
    leaves, _ = make_leaves(1, 4, 4, 2, 12, 2, 4, dtype=torch.float32, seed=15)
    leaves[2], leaves[3] = leaves[2].half(), leaves[3].half()
    out, exp, g_t, g_r = run_both(leaves, views_of(False))
    assert out.dtype == torch.float32
    assert [g.dtype for g in g_t] == [
        torch.float32,
        torch.float32,
        torch.float16,
        torch.float16,
        torch.float32,
    ]
    assert_close(out, exp, g_t, g_r, rtol=2e-3)  # the fp16 gradients carry one fp16 rounding
    exp_out = exp.float()
    assert (out.detach().cpu() - exp_out).abs().max() <= 1e-5 * exp_out.abs().max()


def test_tile_overrides_several_chunks_and_token_tiles():
    """Channel chunks and token tiles smaller than the head and the sequence (masked tails)."""
    leaves, _ = make_leaves(1, 2, 12, 3, 21, 2, 3, seed=16)
    out, exp, g_t, g_r = run_both(leaves, views_of(False), block_d=4, block_l=8)
    assert_close(out, exp, g_t, g_r)


def test_nan_and_clamp_boundaries_follow_the_torch_path():
    """NaN offsets read zero and get zero gradient; positions exactly -1 and L, and beyond, follow
    `readout_tokens` (clamp to [-1, L]) with the installed torch's clamp backward at the bounds."""
    batch, groups, d_inner, n, length, heads, points = 1, 2, 4, 1, 6, 2, 4
    leaves, _ = make_leaves(batch, groups, d_inner, n, length, heads, points, seed=17)
    off = leaves[1]  # (K, S, B, L, G), relative: head 0 of direction 0 gets the special positions
    i = torch.arange(length, dtype=torch.float64)
    off[0, 0, 0, :, 0] = float("nan")
    off[1, 0, 0, :, 0] = -1 - i  # pos = -1: only the upper tap (token 0) is inside
    off[2, 0, 0, :, 0] = length - i  # pos = L: both taps outside, clamp still passes the gradient
    off[3, 0, 0, :, 0] = length + 2.5 - i  # beyond L: clamped
    off[1, 1, 0, 2, 1] = float("nan")

    tri = [t.detach().to(DEVICE).requires_grad_() for t in leaves]
    ref = [t.detach().requires_grad_() for t in leaves]
    tv, rv = views_of(False)(tri), views_of(False)(ref)
    out = adaptor_t_readout_triton(*tv)
    exp = readout_tokens(states_table(rv[0]), rv[1], rv[2], rv[3], rv[4], True, n)
    assert torch.isfinite(out).all()
    cot = torch.randn(exp.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g_t = torch.autograd.grad((out * cot.to(out)).sum(), tri)
    g_r = torch.autograd.grad((exp * cot).sum(), ref)
    assert (out.detach().cpu() - exp.detach()).abs().max().item() <= 1e-12
    for name, a, b in zip(NAMES, g_t, g_r):
        assert torch.isfinite(a).all(), name
        assert (a.cpu() - b).abs().max().item() <= 1e-12, name
    nan_grad = g_t[1].cpu()[torch.isnan(leaves[1])]
    assert nan_grad.numel() == length + 1 and torch.all(nan_grad == 0)
    assert torch.all(g_t[1][2:, 0, 0, :, 0] == 0)  # pos = L and beyond: no position gradient
    assert g_t[1][:, 1].abs().max() > 0.1  # the other head's ordinary positions do get one


@pytest.mark.parametrize("inclusive", [True, False])
def test_position_gradient_at_minus_one_follows_torch_clamp(inclusive, monkeypatch):
    """pos == -1 exactly: its upper tap reads token 0. torch 2.11's clamp backward passes the gradient
    at the bound (then the kernel matches the unclamped reference there), torch 2.14's does not (then
    it is zero); the kernel mirrors whichever torch is installed."""
    import adaptor_peft.kernels.adaptor_t_triton as at

    monkeypatch.setattr(at, "clamp_grad_at_bounds", lambda: inclusive)
    leaves, _ = make_leaves(1, 2, 4, 1, 6, 1, 2, seed=21)
    leaves[1][0, 0, 0, :, 0] = -1 - torch.arange(6, dtype=torch.float64)  # point 0, direction 0
    out, exp, g_t, g_r = run_both(leaves, views_of(False))
    at_bound = g_t[1][0, 0, 0, :, 0].cpu()
    assert at_bound.abs().min() > 0 if inclusive else torch.all(at_bound == 0)
    if not inclusive:  # the reference does not clamp: it keeps the gradient at -1
        g_r[1][0, 0, 0, :, 0] = 0
    assert_close(out, exp, g_t, g_r)


def test_only_some_inputs_need_grad_and_no_grad_mode():
    leaves, views = make_leaves(1, 4, 4, 1, 8, 2, 4, seed=18)
    views = [t.to(DEVICE) for t in views]
    off = views[1].clone().requires_grad_()
    out = adaptor_t_readout_triton(views[0], off, *views[2:])
    (d_off,) = torch.autograd.grad(out.sum(), [off])
    exp_off = off.detach().cpu().clone().requires_grad_()
    exp = adaptor_t_readout_ref(views[0].cpu(), to_ref_layout(exp_off), to_ref_layout(views[2].cpu()),
                                views[3].cpu(), views[4].cpu())  # fmt: skip
    (e_off,) = torch.autograd.grad(exp.sum(), [exp_off])
    assert (d_off.cpu() - e_off).abs().max().item() <= 1e-12
    with torch.no_grad():
        again = adaptor_t_readout_triton(views[0], off, *views[2:])
    assert again.grad_fn is None and torch.equal(again, out.detach())


def test_add_to_fuses_the_residual_add():
    """add_to = y: y + read-out in one pass, its gradient passes through; without autograd a contiguous
    fp32 y is updated in place (as the torch path does); a strided or half y gets a new tensor."""
    leaves, views = make_leaves(2, 4, 4, 2, 9, 2, 4, dtype=torch.float32, seed=20)
    views = [t.to(DEVICE) for t in views]
    y = torch.randn(2, 16, 9, device=DEVICE, requires_grad=True)
    plain = adaptor_t_readout_triton(*views)
    fused = adaptor_t_readout_triton(*views, add_to=y)
    assert (fused - (y + plain)).abs().max().item() <= 1e-6
    (dy,) = torch.autograd.grad((fused * 3).sum(), [y])
    assert torch.equal(dy, torch.full_like(y, 3.0))
    with torch.no_grad():
        y_inf = y.detach().clone()
        out = adaptor_t_readout_triton(*views, add_to=y_inf)
        assert out.data_ptr() == y_inf.data_ptr() and torch.equal(out, fused.detach())
        y_t = y.detach().transpose(1, 2).contiguous().transpose(1, 2)  # a channel-last y: not in place
        out = adaptor_t_readout_triton(*views, add_to=y_t)
        assert out.data_ptr() != y_t.data_ptr() and torch.equal(out, fused.detach())
        out = adaptor_t_readout_triton(*views, add_to=y.detach().half())
        assert out.dtype == torch.float32 and (out - fused).abs().max().item() <= 1e-2
    with pytest.raises(ValueError, match=r"add_to must be \(B=2, G\*D=16, L=9\), got \(2, 16, 8\)"):
        adaptor_t_readout_triton(*views, add_to=y[..., :8])


def test_empty_batch():
    leaves, views = make_leaves(1, 2, 2, 1, 4, 1, 2, seed=19)
    views = [t.to(DEVICE) for t in views]
    empty = [views[0][:0], views[1][:0], views[2][:0], views[3][:0], views[4]]
    assert adaptor_t_readout_triton(*empty).shape == (0, 4, 4)


def test_bad_shapes_raise():
    _, (h, off, w, C, gamma) = make_leaves(1, 2, 4, 2, 5, 2, 3)
    h, off, w, C, gamma = (t.to(DEVICE) for t in (h, off, w, C, gamma))
    with pytest.raises(ValueError, match=r"h must be \(B, G\*D, N, L\), got shape \(8, 2, 5\)"):
        adaptor_t_readout_triton(h[0], off, w, C, gamma)
    with pytest.raises(ValueError, match=r"C must be \(B=1, G, N=2, L=5\), got shape \(1, 2, 2, 4\)"):
        adaptor_t_readout_triton(h, off, w, C[..., :4], gamma)
    with pytest.raises(ValueError, match="8 channels of h do not split into the G=3 directions"):
        adaptor_t_readout_triton(h, off, w, torch.cat([C, C[:, :1]], 1), gamma)
    with pytest.raises(
        ValueError, match=r"offsets must be \(B=1, L=5, G=2, S, K\), got shape \(1, 4, 2, 2, 3\)"
    ):
        adaptor_t_readout_triton(h, off[:, :4], w, C, gamma)
    with pytest.raises(
        ValueError, match=r"weights shape \(1, 5, 2, 2, 2\) != offsets shape \(1, 5, 2, 2, 3\)"
    ):
        adaptor_t_readout_triton(h, off, w[..., :2], C, gamma)
    with pytest.raises(ValueError, match="S=3 heads .* do not divide d_inner=4"):
        adaptor_t_readout_triton(h, torch.cat([off, off[:, :, :, :1]], 3), torch.cat([w, w[:, :, :, :1]], 3),
                                 C, gamma)  # fmt: skip
    with pytest.raises(ValueError, match=r"gamma must have shape \(8,\), got \(4,\)"):
        adaptor_t_readout_triton(h, off, w, C, gamma[:4])
    with pytest.raises(ValueError, match="block_d must be a power of two, got 3"):
        adaptor_t_readout_triton(h, off, w, C, gamma, block_d=3)
    with pytest.raises(ValueError, match="one device"):
        adaptor_t_readout_triton(h, off, w, C.to("meta"), gamma)


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    import adaptor_peft.kernels.triton_utils as triton_utils

    monkeypatch.setattr(triton_utils, "is_interpreted", lambda kernel: False)
    _, views = make_leaves(1, 2, 2, 1, 3, 1, 2)
    with pytest.raises(
        RuntimeError, match=r"adaptor_t_readout_triton: the Triton backend needs CUDA tensors"
    ):
        adaptor_t_readout_triton(*views)


def test_gpu_tile_choice():
    """GPU tiles (host logic only): powers of two within the register budget at VMamba shapes."""
    for per_head, points, length in [(96, 4, 3136), (768, 4, 49), (1, 1, 1), (48, 3, 35)]:
        t = _tiles(per_head, points, length, interpreted=False)
        assert t.k >= points and 16 <= t.l <= 64 and t.d <= max(1, per_head * 2)
        assert t.d * t.k * t.l <= 1024 and t.bwd_d * t.k * t.l <= 512
        assert all(v & (v - 1) == 0 for v in t)
    # B=64 VMamba-T stages (G*S = 8): the tiles that were fastest on an H100
    assert _tiles(96, 4, 3136, interpreted=False, heads_total=512)[:3] == (2, 4, 64)
    assert _tiles(768, 4, 49, interpreted=False, heads_total=512)[:3] == (4, 4, 64)


SM90_BUILDS = r"""
import adaptor_peft.kernels.adaptor_t_triton as at

UNIT = {"sh_l", "sC_l", "sdo_l", "so_l", "sw_l", "s_gamma", "sa_l"}  # the module's token-contiguous views
t = at._tiles(96, 4, 3136, interpreted=False, heads_total=512)
fwd = dict(RELATIVE=True, ACC=tl.float32, BLOCK_D=t.d, BLOCK_K=t.k, BLOCK_L=t.l)
bwd = dict(fwd, CLAMP_INCLUSIVE=False, HAS_DH=True, BLOCK_D=t.bwd_d)
build("fwd N1", at._readout_fwd_kernel, dict(fwd, HAS_ADD=True))
build("bwd N1", at._readout_bwd_kernel, dict(bwd, BLOCK_N=1))
build("fwd N16 abs", at._readout_fwd_kernel, dict(fwd, RELATIVE=False, HAS_ADD=False))
build("bwd N16", at._readout_bwd_kernel, dict(bwd, BLOCK_N=16))
"""


@pytest.mark.skipif(DEVICE == "cuda", reason="the CUDA run compiles and runs the kernels for real")
def test_kernels_lower_for_sm90(tmp_path):
    """Lower the forward and backward kernels for sm_90 (bundled ptxas, no GPU): a construct the GPU
    backend rejects fails here too, and the GPU tiles must not spill registers."""
    from sm90_lowering import lower_in_subprocess

    rows = lower_in_subprocess(SM90_BUILDS, tmp_path)
    assert [label for label, _, _ in rows] == ["fwd N1", "bwd N1", "fwd N16 abs", "bwd N16"]
    assert all(not spills for _, _, spills in rows), rows
