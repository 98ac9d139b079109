"""AdaptorT module: identity init, static selection, sharing, shapes, ys accumulation, Triton == torch."""

from __future__ import annotations

import pytest
import torch

import adaptor_peft.adaptors.temporal as temporal
from adaptor_peft.adaptors import AdaptorT, MambaAdaptorConfig
from adaptor_peft.kernels.adaptor_t_ref import adaptor_t_readout_ref
from adaptor_peft.kernels.adaptor_t_torch import PAD_BEFORE, states_table


def _as_readout_args(table, offsets, weights, C):
    """readout_tokens operands -> adaptor_t_readout_torch operands (h, offsets, weights in (B, G*S, K, L))."""
    batch, length, groups, heads, points = offsets.shape
    n = C.shape[2]
    tokens = table[:, PAD_BEFORE : PAD_BEFORE + length]
    h = tokens.reshape(batch, length, -1, n).permute(0, 2, 3, 1)
    to4 = lambda t: t.permute(0, 2, 3, 4, 1).reshape(batch, groups * heads, points, length)  # noqa: E731
    return h, to4(offsets), to4(weights)


def ref_readout(h, offsets, weights, C, gamma, relative, add_to=None):
    """The naive loop standing in for the module's read-out (dispatch.adaptor_t_readout's arguments)."""
    _, off, w = _as_readout_args(states_table(h), offsets, weights, C)
    out = adaptor_t_readout_ref(h, off, w, C, gamma, relative)
    return out if add_to is None else add_to + out


def _states(batch, d_inner, n, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(batch, 4 * d_inner, n, H * W, generator=g, dtype=torch.float64)
    Cs = torch.randn(batch, 4, n, H * W, generator=g, dtype=torch.float64)
    return hs, Cs


def _module(d_inner, n, **kw):
    torch.manual_seed(0)
    return AdaptorT(d_inner, n, MambaAdaptorConfig(init="random", **kw)).double()


# The module's output and gradients (torch and Triton paths, every config axis) are compared with an
# independent scalar oracle and hand-worked numbers in test_adaptor_t_oracle.py. (A former test here
# swapped only the read-out for the kernel reference, so predictors, softmax and offsets were
# checked against themselves.)


def test_identity_init_returns_exact_zero_but_keeps_gradients():
    module = AdaptorT(8, 1, MambaAdaptorConfig()).double()
    hs, Cs = _states(2, 8, 1, 3, 4)
    out = module(hs, Cs, 3, 4)
    assert torch.equal(out, torch.zeros_like(out))
    (g_gamma,) = torch.autograd.grad(out.sum(), [module.gamma])
    assert g_gamma.abs().min() > 0  # gamma learns from step 0
    assert module.phi_p.weight.abs().max() == 0 and module.phi_c.weight.abs().max() == 0
    torch.testing.assert_close(
        module.phi_p.bias[0], torch.tensor([-1.0, 1, -2, 2, -2, 2, -4, 4], dtype=torch.float64)
    )


def test_static_selection_offsets_do_not_depend_on_the_input(monkeypatch):
    seen = []

    def spy(h, offsets, weights, C, gamma, relative, *, add_to=None, table=None, backend=None):
        seen.append(_as_readout_args(states_table(h), offsets, weights, C)[1].detach().clone())
        return ref_readout(h, offsets, weights, C, gamma, relative, add_to=add_to)

    monkeypatch.setattr(temporal, "adaptor_t_readout", spy)
    static, dynamic = _module(8, 1, selection="static"), _module(8, 1)
    for module in (static, dynamic):
        for seed in (0, 1):
            module(*_states(1, 8, 1, 2, 3, seed=seed), 2, 3)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[2], seen[3])
    assert torch.equal(seen[0][..., 0], seen[0][..., 5])  # same offsets for every token


def test_shared_equals_per_direction_with_tied_weights():
    shared = _module(8, 2)
    per_dir = _module(8, 2, share_across_directions=False)
    with torch.no_grad():
        for name, p in per_dir.named_parameters():
            p.copy_(dict(shared.named_parameters())[name].expand_as(p))
    hs, Cs = _states(2, 8, 2, 3, 3)
    torch.testing.assert_close(shared(hs, Cs, 3, 3), per_dir(hs, Cs, 3, 3), atol=1e-12, rtol=0)


def test_absolute_positions_stay_inside_the_sequence(monkeypatch):
    seen = []

    def spy(h, offsets, weights, C, gamma, relative, *, add_to=None, table=None, backend=None):
        seen.append((_as_readout_args(states_table(h), offsets, weights, C)[1], relative))
        return ref_readout(h, offsets, weights, C, gamma, relative, add_to=add_to)

    monkeypatch.setattr(temporal, "adaptor_t_readout", spy)
    module = AdaptorT(8, 1, MambaAdaptorConfig(offset_mode="absolute", num_heads=2, num_points=2))
    module(*[t.float() for t in _states(1, 8, 1, 3, 5)], 3, 5)
    offsets, relative = seen[0]
    assert not relative and offsets.min() > 0 and offsets.max() < 14
    # identity init spreads the points evenly: fractions 1/8, 3/8, 5/8, 7/8 of L-1 (heads interleaved)
    torch.testing.assert_close(offsets[0, :2, :, 0], torch.tensor([[1.75, 8.75], [5.25, 12.25]]))


def test_wrong_state_shape_raises():
    module = AdaptorT(8, 1, MambaAdaptorConfig())
    hs, Cs = _states(1, 8, 1, 3, 4)
    with pytest.raises(ValueError, match=r"AdaptorT\(d_inner=8, d_state=1\) got states"):
        module(hs.float(), Cs.float(), 4, 4)
    with pytest.raises(ValueError, match="num_heads=3 does not divide d_inner=8"):
        AdaptorT(8, 1, MambaAdaptorConfig(num_heads=3))


def test_bf16_autocast_keeps_positions_in_float32():
    # positions i + offset up to L = 1600 need float32: in bf16 they would snap to multiples of 8
    module = _module(8, 1).float()
    hs, Cs = (t.float() for t in _states(1, 8, 1, 40, 40))
    ref = module(hs, Cs, 40, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(hs, Cs, 40, 40)
    assert out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize("n", [1, 2])
def test_ys_is_accumulated_in_place_only_without_autograd(n):
    """forward(..., ys=ys) == ys + forward(...); in place (same storage) only where no gradient flows."""
    module = _module(8, n).float()
    hs, Cs = (t.float() for t in _states(2, 8, n, 3, 5))
    ys = torch.randn(2, 32, 15)
    with torch.no_grad():
        expected = ys + module(hs, Cs, 3, 5)
        target = ys.clone()
        out = module(hs, Cs, 3, 5, ys=target)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert (out.data_ptr() == target.data_ptr()) == (n == 1)  # the CPU N=1 inference path reuses ys
    with torch.no_grad():  # a ys of another dtype is never written in place
        wide = ys.double()
        out = module(hs, Cs, 3, 5, ys=wide)
    assert out.dtype == torch.float64 and torch.equal(wide, ys.double())
    torch.testing.assert_close(out.float(), expected, atol=1e-6, rtol=1e-6)
    leaf = ys.clone().requires_grad_()
    out = module(hs, Cs, 3, 5, ys=leaf)  # with autograd: out of place, gradients reach ys and phi
    torch.testing.assert_close(out.detach(), expected, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(ys)) and module.phi_c.weight.grad.abs().max() > 0


@pytest.mark.parametrize(
    "n, kw",
    [
        (1, {}),
        (2, {}),
        (1, {"selection": "static"}),
        (2, {"offset_mode": "absolute", "share_across_directions": False}),
    ],
)
def test_triton_path_equals_torch_path(n, kw, monkeypatch):
    """The GPU path (batched-GEMM predictors + the fused Triton read-out, run by the interpreter here)
    gives the torch path's output and gradients in float64, for every parameter and input."""
    from adaptor_peft.kernels.dispatch import _interpreter_on

    if not _interpreter_on() and not torch.cuda.is_available():
        pytest.fail("conftest sets TRITON_INTERPRET=1 on CPU machines")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = _module(8, n, **kw).to(device)
    hs, Cs = (t.to(device) for t in _states(2, 8, n, 3, 5))
    ys = torch.randn(2, 32, 15, dtype=torch.float64, device=device)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("ADAPTOR_PEFT_SCAN", backend)
        leaves = [hs.clone().requires_grad_(), Cs.clone().requires_grad_(), ys.clone().requires_grad_()]
        out = module(leaves[0], leaves[1], 3, 5, ys=leaves[2])
        grads = torch.autograd.grad(out.pow(2).sum(), [*leaves, *module.parameters()])
        results[backend] = (out, grads)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-12, rtol=1e-12)
    for a, b in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
