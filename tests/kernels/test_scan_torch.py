"""Fast chunked PyTorch scan (`selective_scan_torch`) against the sequential reference."""

from __future__ import annotations

import math

import pytest
import torch

from adaptor_peft.kernels.scan_ref import selective_scan_ref
from adaptor_peft.kernels.scan_torch import default_chunk_size, selective_scan_torch, softplus_fp32

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
CHUNK = 8  # forced chunk length, so that L in {1, 7, 8, 9, 37, 19} covers every boundary case


def make(batch=2, groups=2, per=3, n=1, length=9, dtype=torch.float64, seed=0):
    """VMamba-like inputs: dt = softplus(delta + bias) in ~[1e-3, 0.3], A = -(1..N) * U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    kd = groups * per
    u = torch.randn(batch, kd, length, generator=g, dtype=torch.float64)
    delta = 0.5 * torch.randn(batch, kd, length, generator=g, dtype=torch.float64)
    A = -(torch.rand(kd, n, generator=g, dtype=torch.float64) + 0.5) * torch.arange(1, n + 1)
    B = torch.randn(batch, groups, n, length, generator=g, dtype=torch.float64)
    C = torch.randn(batch, groups, n, length, generator=g, dtype=torch.float64)
    D = torch.randn(kd, generator=g, dtype=torch.float64)
    dt0 = torch.exp(torch.rand(kd, generator=g, dtype=torch.float64) * math.log(100) + math.log(1e-3))
    bias = dt0 + torch.log(-torch.expm1(-dt0))  # inverse softplus
    return [t.to(dtype) for t in (u, delta, A, B, C, D, bias)]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def both(inputs, chunk=CHUNK, **flags):
    """Outputs and input gradients (random cotangents on every output) of torch path and ref."""
    res = []
    for fn, kw in ((selective_scan_torch, {"chunk_size": chunk}), (selective_scan_ref, {})):
        xs = [t.clone().requires_grad_() if t is not None else None for t in inputs]
        out = fn(*xs, **flags, **kw)
        out = out if isinstance(out, tuple) else (out,)
        gen = torch.Generator().manual_seed(5)
        cot = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in out]
        live = [x for x in xs if x is not None]
        grads = torch.autograd.grad(out, live, cot)
        res.append((out, grads))
    return res


@pytest.mark.parametrize("n", [1, 2, 16])
@pytest.mark.parametrize("length", [1, 7, CHUNK - 1 + 0, CHUNK, CHUNK + 1, 37, 2 * CHUNK + 3])
def test_matches_ref_fp64_all_outputs_and_grads(n, length):
    (out, grads), (rout, rgrads) = both(
        make(n=n, length=length), delta_softplus=True, return_last_state=True, return_states=True
    )
    for o, r in zip(out, rout):
        assert o.dtype == torch.float64 and o.shape == r.shape
        assert rel(o, r) < 1e-12
    for name, g, r in zip(NAMES, grads, rgrads):
        assert rel(g, r) < 1e-11, name


@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize(
    "use_d,use_bias,softplus", [(False, False, False), (True, False, True), (False, True, True)]
)
def test_optional_parts_fp64(n, use_d, use_bias, softplus):
    x = make(n=n, length=19)
    if not softplus:
        x[1] = x[1].abs() * 0.2  # keep dt >= 0 without softplus
    x[5] = x[5] if use_d else None
    x[6] = x[6] if use_bias else None
    (out, grads), (rout, rgrads) = both(x, delta_softplus=softplus)
    assert rel(out[0], rout[0]) < 1e-12
    assert len(grads) == len(rgrads) == 5 + use_d + use_bias
    for g, r in zip(grads, rgrads):
        assert rel(g, r) < 1e-11


@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("length", [1, 37, 63, 64, 65, 200])
def test_fp32_default_chunk_vs_fp64_ref(n, length):
    x = make(n=n, length=length, groups=4, per=2)
    y, last = selective_scan_torch(*[t.float() for t in x], delta_softplus=True, return_last_state=True)
    ry, rlast = selective_scan_ref(*x, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.float32
    assert (y.double() - ry).abs().max().item() <= 1e-5 * max(1.0, ry.abs().max().item())
    assert (last.double() - rlast).abs().max().item() <= 1e-5 * max(1.0, rlast.abs().max().item())


def test_default_chunk_size():
    assert [default_chunk_size(L) for L in (1, 7, 49, 64, 65, 196, 784, 3136, 10**6)] == [
        1,
        7,
        32,
        32,
        32,
        32,
        32,
        56,
        64,
    ]


@pytest.mark.parametrize("n", [1, 2, 16])
def test_gradcheck_with_states(n):
    x = make(batch=1, groups=2, per=2, n=n, length=9)
    xs = [t.requires_grad_() for t in x]

    def fn(*args):
        return selective_scan_torch(
            *args, delta_softplus=True, return_last_state=True, return_states=True, chunk_size=4
        )

    assert torch.autograd.gradcheck(fn, xs, fast_mode=n == 16)


def test_gradcheck_no_softplus_one_group():
    x = make(batch=1, groups=1, per=3, n=2, length=6)
    x[1] = x[1].abs() * 0.3
    x[6] = x[6].abs()  # dt = delta + bias stays >= 0 without softplus
    xs = [t.requires_grad_() for t in x]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_torch(*a, chunk_size=4), xs)


@pytest.mark.parametrize("which", ["states", "last"])
def test_gradient_from_states_only(which):
    """dh_ext / dlast path with y unused (dy is None in the backward)."""
    x = make(n=2, length=21)
    outs = []
    for fn, kw in ((selective_scan_torch, {"chunk_size": CHUNK}), (selective_scan_ref, {})):
        xs = [t.clone().requires_grad_() for t in x]
        _, last, states = fn(*xs, delta_softplus=True, return_last_state=True, return_states=True, **kw)
        loss = (
            (states * torch.linspace(-1, 1, 21, dtype=torch.float64)).sum()
            if which == "states"
            else last.sum()
        )
        outs.append(torch.autograd.grad(loss, xs, allow_unused=True))
    for name, g, r in zip(NAMES, *outs):
        if name in ("C", "D"):  # C and D only feed y
            assert r is None and (g is None or g.abs().max() == 0), name
            continue
        assert rel(g, r) < 1e-11, name


def test_states_gradient_added_to_y_gradient():
    """Adaptor-T's use: loss on y plus a read-out of the states; both gradients flow back."""
    x = make(n=1, length=30)
    res = []
    for fn, kw in ((selective_scan_torch, {"chunk_size": CHUNK}), (selective_scan_ref, {})):
        xs = [t.clone().requires_grad_() for t in x]
        y, hs = fn(*xs, delta_softplus=True, return_states=True, **kw)
        loss = (y**2).sum() + (hs * hs.detach().flip(-1)).sum()
        res.append(torch.autograd.grad(loss, xs))
    for name, g, r in zip(NAMES, *res):
        assert rel(g, r) < 1e-11, name


def _finite_all(out, grads):
    return all(torch.isfinite(t).all() for t in (*out, *grads) if t is not None)


def test_edge_large_dt_passthrough():
    x = make(n=2, length=20)
    x[1] = x[1] + 40.0  # softplus(z) = z above 20
    (out, grads), (rout, rgrads) = both(x, delta_softplus=True)
    assert _finite_all(out, grads)
    assert rel(out[0], rout[0]) < 1e-12
    for g, r in zip(grads, rgrads):
        assert rel(g, r) < 1e-10


def test_edge_very_negative_dt_fp32_accuracy():
    x = make(n=1, length=20)
    x[1] = x[1] - 12.0  # dt ~ 1e-6: the log(1 + exp) pitfall region
    y = selective_scan_torch(*[t.float() for t in x], delta_softplus=True)
    ry = selective_scan_ref(*x, delta_softplus=True)
    assert rel(y, ry) < 1e-6


def test_softplus_fp32_accuracy():
    z = torch.linspace(-80, 200, 100_001)  # below ~-87 the result is an fp32 denormal
    ref = torch.nn.functional.softplus(z.double())
    got = softplus_fp32(z)
    assert ((got.double() - ref).abs() / ref).max().item() < 3e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_underflowing_decay_no_nan(dtype):
    x = make(n=2, length=20, dtype=dtype)
    x[2] = torch.full_like(x[2], -80.0)  # A * dt ~ -80 with dt ~ 1
    x[1] = torch.ones_like(x[1])
    x[6] = torch.full_like(x[6], 0.55)  # softplus(1.55) ~ 1.73
    xs = [t.requires_grad_() for t in x]
    y, last = selective_scan_torch(*xs, delta_softplus=True, return_last_state=True, chunk_size=CHUNK)
    grads = torch.autograd.grad((y.sum(), last.sum()), xs)
    assert _finite_all((y, last), grads)
    ry = selective_scan_ref(*[t.double() for t in x], delta_softplus=True)
    assert rel(y, ry) < 1e-6


def test_non_contiguous_inputs():
    x = make(n=2, length=13)
    u_t = x[0].transpose(1, 2).contiguous().transpose(1, 2)  # (B, KD, L) with L-stride KD
    B_wide = torch.cat([x[3], x[3]], dim=-1)[..., ::2]  # stride 2 along L, values differ from x[3]
    C_perm = x[4].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    args = [u_t, x[1][:, :, :], x[2].t().contiguous().t(), B_wide, C_perm, x[5][::1], x[6]]
    assert not u_t.is_contiguous() and not B_wide.is_contiguous() and not C_perm.is_contiguous()
    (out, grads), (rout, rgrads) = both(args, delta_softplus=True, return_states=True)
    assert rel(out[0], rout[0]) < 1e-12 and rel(out[1], rout[1]) < 1e-12
    for g, r in zip(grads, rgrads):
        assert rel(g, r) < 1e-11


def test_bf16_inputs_fp32_out():
    x = make(n=1, length=40, dtype=torch.float32)
    for i in (0, 1, 3, 4):
        x[i] = x[i].bfloat16()
    xs = [t.clone().requires_grad_() for t in x]
    y = selective_scan_torch(*xs, delta_softplus=True)
    ry = selective_scan_ref(*[t.double() for t in x], delta_softplus=True)
    assert y.dtype == torch.float32
    assert (y.double() - ry).abs().max().item() <= 1e-5 * max(1.0, ry.abs().max().item())
    grads = torch.autograd.grad(y.sum(), xs)
    assert [g.dtype for g in grads] == [t.dtype for t in x]


def test_no_grad_inputs_and_shape_errors():
    x = make(n=1, length=5, dtype=torch.float32)
    with torch.no_grad():
        y = selective_scan_torch(*x, delta_softplus=True)
    assert torch.allclose(y, selective_scan_ref(*x, delta_softplus=True), atol=1e-6)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_torch(x[0], x[1], x[2], x[3][..., :4], x[4])
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan_torch(x[0], x[1], x[2], x[3].repeat(1, 2, 1, 1), x[4].repeat(1, 2, 1, 1))
    empty = selective_scan_torch(
        x[0][..., :0], x[1][..., :0], x[2], x[3][..., :0], x[4][..., :0], return_states=True
    )
    assert empty[0].shape == (2, 6, 0) and empty[1].shape == (2, 6, 1, 0)


def test_step_loop_pieces_match(monkeypatch):
    """Steps cut into several inline pieces (small per-step size) give the same numbers."""
    from adaptor_peft.kernels import scan_torch

    x = make(n=2, length=21)
    (out, grads), _ = both(x, delta_softplus=True, return_last_state=True, return_states=True)
    monkeypatch.setattr(scan_torch, "_GRAIN", 5)
    assert len(scan_torch._pieces(2 * 6 * 3 * 2)) == 15
    (out2, grads2), _ = both(x, delta_softplus=True, return_last_state=True, return_states=True)
    for a, b in zip((*out, *grads), (*out2, *grads2)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("subset", [("u",), ("delta", "A"), ("B", "C"), ("D", "delta_bias")])
def test_grad_subsets(subset):
    """Only the inputs that require grad get one, and those equal the reference's."""
    x = make(n=2, length=11)
    res = []
    for fn, kw in ((selective_scan_torch, {"chunk_size": 4}), (selective_scan_ref, {})):
        xs = [t.clone().requires_grad_(name in subset) for name, t in zip(NAMES, x)]
        y = fn(*xs, delta_softplus=True, **kw)
        res.append(torch.autograd.grad(y.square().sum(), [t for t in xs if t.requires_grad]))
    for g, r in zip(*res):
        assert rel(g, r) < 1e-11
