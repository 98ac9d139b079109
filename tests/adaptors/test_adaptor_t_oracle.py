"""AdaptorT (torch and Triton paths) against an independent scalar oracle and hand-worked numbers.

The oracle (adaptor_t_oracle.py) is written from the equations with Python loops and shares no code
with adaptor_peft; the hand-worked cases below carry their expected values as literals.
"""

from __future__ import annotations

import math

import pytest
import torch
from adaptor_t_oracle import oracle_for  # tests/adaptors is on sys.path (pytest rootdir-less import)
from torch.func import functional_call

from adaptor_peft.adaptors import AdaptorT, MambaAdaptorConfig
from adaptor_peft.kernels.dispatch import _interpreter_on

F64 = torch.float64
BACKENDS = ("torch", "triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Select the module's path through the dispatch environment variable."""
    if request.param == "triton" and DEVICE == "cpu" and not _interpreter_on():
        pytest.fail("conftest sets TRITON_INTERPRET=1 on CPU machines")
    monkeypatch.setenv("ADAPTOR_PEFT_SCAN", request.param)
    return request.param


# ---------------------------------------------------------------------------------------------
# random configurations against the oracle

# name, d_inner, d_state, H, W, batch, config
CONFIGS = [
    ("default-S2K4-N3", 2, 3, 1, 5, 1, dict()),  # the library's default Adaptor-T config
    ("rel-dyn-shared-S2K2-N1", 4, 1, 2, 3, 2, dict(num_heads=2, num_points=2)),
    ("rel-dyn-shared-S2K3-N2", 2, 2, 1, 5, 1, dict(num_heads=2, num_points=3)),
    (
        "abs-dyn-perdir-S2K2-N2",
        4,
        2,
        2,
        2,
        1,
        dict(num_heads=2, num_points=2, offset_mode="absolute", share_across_directions=False),
    ),
    ("rel-static-shared-S1K3-N1", 2, 1, 2, 3, 1, dict(num_heads=1, num_points=3, selection="static")),
    (
        "rel-static-perdir-mean-S2K2-N2",
        2,
        2,
        1,
        5,
        1,
        dict(
            num_heads=2,
            num_points=2,
            selection="static",
            share_across_directions=False,
            phi_input="state_mean",
        ),
    ),
    (
        "abs-static-shared-S1K1-N1",
        2,
        1,
        1,
        4,
        2,
        dict(num_heads=1, num_points=1, selection="static", offset_mode="absolute"),
    ),
    (
        "rel-dyn-perdir-mean-S1K2-N2",
        2,
        2,
        2,
        2,
        1,
        dict(num_heads=1, num_points=2, share_across_directions=False, phi_input="state_mean"),
    ),
    (
        "abs-dyn-shared-mean-S2K3-N1",
        4,
        1,
        1,
        5,
        1,
        dict(num_heads=2, num_points=3, offset_mode="absolute", phi_input="state_mean"),
    ),
    ("rel-dyn-shared-S2K1-N2", 2, 2, 2, 2, 1, dict(num_heads=2, num_points=1)),
]
IDS = [c[0] for c in CONFIGS]

# standard deviations of the random parameters: relative offsets of a few tokens (some positions
# fall outside the L = 4..6 tokens), logits of order 1, gamma of order 1 with either sign
SCALES = {
    "phi_p.weight": 0.8,
    "phi_p.bias": 2.0,
    "static_offsets": 2.0,
    "phi_c.weight": 0.8,
    "phi_c.bias": 1.0,
    "gamma": 1.0,
}


def _random_module(d_inner, n, cfg, seed=0):
    module = AdaptorT(d_inner, n, MambaAdaptorConfig(**cfg)).to(device=DEVICE, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * SCALES[name])
    return module


def _random_inputs(batch, d_inner, n, length, seed=1):
    gen = torch.Generator().manual_seed(seed)
    hs = torch.randn(batch, 4 * d_inner, n, length, generator=gen, dtype=F64)
    Cs = torch.randn(batch, 4, n, length, generator=gen, dtype=F64)
    ys = torch.randn(batch, 4 * d_inner, length, generator=gen, dtype=F64)
    return [t.to(DEVICE) for t in (hs, Cs, ys)]


@pytest.mark.parametrize(("name", "d_inner", "n", "H", "W", "batch", "cfg"), CONFIGS, ids=IDS)
def test_module_equals_oracle(backend, name, d_inner, n, H, W, batch, cfg):
    """Output with and without ys, and every gradient, equal the scalar oracle's in float64."""
    module = _random_module(d_inner, n, cfg)
    hs, Cs, ys = _random_inputs(batch, d_inner, n, H * W)
    with torch.no_grad():
        expected = oracle_for(module.cpu(), hs.cpu(), Cs.cpu()).to(DEVICE)
        module.to(DEVICE)
        assert expected.abs().max() > 0.1  # every term non-zero: gamma, C, the samples
        torch.testing.assert_close(module(hs, Cs, H, W), expected, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(module(hs, Cs, H, W, ys=ys.clone()), ys + expected, atol=1e-10, rtol=1e-10)

    # gradients: the module's backward (embedding_bag autograd / the Triton kernel's hand-written
    # backward) against autograd through the oracle's scalar arithmetic
    params = list(module.parameters())
    cot = torch.randn(batch, 4 * d_inner, H * W, dtype=F64, generator=torch.Generator().manual_seed(2))
    leaves = [t.clone().requires_grad_() for t in (hs, Cs, ys)]
    out = module(leaves[0], leaves[1], H, W, ys=leaves[2])
    got = torch.autograd.grad((out * cot.to(DEVICE)).sum(), [*leaves, *params])
    cpu_module = module.cpu()
    cpu_leaves = [t.detach().cpu().requires_grad_() for t in leaves]
    ref = oracle_for(cpu_module, cpu_leaves[0], cpu_leaves[1], ys=cpu_leaves[2])
    want = torch.autograd.grad((ref * cot).sum(), [*cpu_leaves, *cpu_module.parameters()])
    names = ["hs", "Cs", "ys", *(n for n, _ in module.named_parameters())]
    for label, a, b in zip(names, got, want):
        torch.testing.assert_close(
            a.cpu(), b, atol=1e-10, rtol=1e-10, msg=lambda m, label=label: f"{label}: {m}"
        )
    grads = dict(zip(names, want))
    offset_param = "phi_p.weight" if "phi_p.weight" in grads else "static_offsets"
    assert grads[offset_param].abs().max() > 0 and grads["gamma"].abs().max() > 0
    if module.points > 1:
        assert grads["phi_c.weight"].abs().max() > 0


@pytest.mark.parametrize(
    ("d_inner", "n", "cfg"),
    [
        (2, 1, dict(num_heads=2, num_points=2)),
        (2, 2, dict(num_heads=1, num_points=2, offset_mode="absolute", phi_input="state_mean")),
        (2, 1, dict(num_heads=2, num_points=2, selection="static", share_across_directions=False)),
    ],
)
def test_torch_path_gradcheck(monkeypatch, d_inner, n, cfg):
    """Finite differences of the CPU path wrt the states, C, ys and every parameter (float64)."""
    monkeypatch.setenv("ADAPTOR_PEFT_SCAN", "torch")
    module = _random_module(d_inner, n, cfg).cpu()
    hs, Cs, ys = (t.cpu() for t in _random_inputs(1, d_inner, n, 4))
    names = [name for name, _ in module.named_parameters()]
    values = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def run(hs, Cs, ys, *params):
        return functional_call(module, dict(zip(names, params)), (hs, Cs, 2, 2), {"ys": ys})

    inputs = [t.clone().requires_grad_() for t in (hs, Cs, ys)] + values
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# hand-worked cases: one direction (G = 1), N = 1; expected values computed by hand (below)

LN3 = math.log(3.0)  # softmax([0, ln 3]) = [1/4, 3/4]; sigmoid(ln 3) = 3/4

HAND_CASES = {
    # p_i = i + 0.25 (static relative offset), gamma = 2, C = [3, -1, 0.5, 2], h = [1, 2, 4, 8]:
    #   m_0 = 0.75*1 + 0.25*2 = 1.25         out_0 = 3 * 2 * 1.25 = 7.5
    #   m_1 = 0.75*2 + 0.25*4 = 2.5          out_1 = -1 * 2 * 2.5 = -5
    #   m_2 = 0.75*4 + 0.25*8 = 5            out_2 = 0.5 * 2 * 5 = 5
    #   m_3 = 0.75*8 + 0.25*0 = 6 (tap 4 is outside: zero)   out_3 = 2 * 2 * 6 = 24
    # with ys = [10, 20, 30, 40]: [17.5, 15, 35, 64]
    "fractional-position-gamma-readout": dict(
        cfg=dict(num_heads=1, num_points=1, selection="static"),
        params={"static_offsets": [[[0.25]]], "gamma": [[2.0]]},
        h=[[1.0, 2.0, 4.0, 8.0]],
        C=[3.0, -1.0, 0.5, 2.0],
        ys=[[10.0, 20.0, 30.0, 40.0]],
        expected=[[17.5, 15.0, 35.0, 64.0]],
    ),
    "fractional-position-gamma-readout-no-ys": dict(
        cfg=dict(num_heads=1, num_points=1, selection="static"),
        params={"static_offsets": [[[0.25]]], "gamma": [[2.0]]},
        h=[[1.0, 2.0, 4.0, 8.0]],
        C=[3.0, -1.0, 0.5, 2.0],
        expected=[[7.5, -5.0, 5.0, 24.0]],
    ),
    # K = 2, logits [0, ln 3] -> c = [1/4, 3/4]; offsets [-1.25, 2.5]; h = [4, 8, -4, 2]; gamma = -2, C = 1
    #   i=0: p = -1.25 -> taps -2, -1 outside: 0;    p = 2.5 -> 0.5*(-4) + 0.5*2 = -1
    #        m = 0.25*0 + 0.75*(-1) = -0.75                              out = -2 * -0.75 = 1.5
    #   i=1: p = -0.25 -> 0.25*(tap -1: 0) + 0.75*4 = 3;  p = 3.5 -> 0.5*2 + 0.5*(tap 4: 0) = 1
    #        m = 0.25*3 + 0.75*1 = 1.5                                   out = -3
    #   i=2: p = 0.75 -> 0.25*4 + 0.75*8 = 7;  p = 4.5 -> 0       m = 1.75    out = -3.5
    #   i=3: p = 1.75 -> 0.25*8 + 0.75*(-4) = -1;  p = 5.5 -> 0   m = -0.25   out = 0.5
    "softmax-K2-outside-zero": dict(
        cfg=dict(num_heads=1, num_points=2, selection="static"),
        params={"static_offsets": [[[-1.25, 2.5]]], "phi_c.bias": [[0.0, LN3]], "gamma": [[-2.0]]},
        h=[[4.0, 8.0, -4.0, 2.0]],
        C=[1.0, 1.0, 1.0, 1.0],
        expected=[[1.5, -3.0, -3.5, 0.5]],
    ),
    # S = 2 heads, D = 2: head 0 owns channel 0 (h = [1, 2, 3]), head 1 channel 1 (h = [10, 20, 40]);
    # phi_c bias rows s*K + k = [0, ln 3 | ln 3, ln 3] -> c head 0 = [1/4, 3/4], head 1 = [1/2, 1/2]
    # offsets head 0 = [0, 1], head 1 = [-1.5, 0.5]; gamma = [1, 0.5]; C = [1, 2, -1]
    #   head 0: i=0: 0.25*h[0] + 0.75*h[1] = 0.25 + 1.5 = 1.75
    #           i=1: 0.25*2 + 0.75*3 = 2.75;  i=2: 0.25*3 + 0.75*(h[3] = 0) = 0.75
    #           out = 1 * m * C = [1.75, 5.5, -0.75]
    #   head 1: i=0: p = -1.5 -> 0;              p = 0.5 -> 0.5*10 + 0.5*20 = 15;  m = 7.5
    #           i=1: p = -0.5 -> 0.5*10 = 5;    p = 1.5 -> 0.5*20 + 0.5*40 = 30;  m = 17.5
    #           i=2: p = 0.5 -> 15;             p = 2.5 -> 0.5*40 = 20;            m = 17.5
    #           out = 0.5 * m * C = [3.75, 17.5, -8.75]
    "two-heads-softmax-per-head": dict(
        cfg=dict(num_heads=2, num_points=2, selection="static"),
        params={
            "static_offsets": [[[0.0, 1.0], [-1.5, 0.5]]],
            "phi_c.bias": [[0.0, LN3, LN3, LN3]],
            "gamma": [[1.0, 0.5]],
        },
        h=[[1.0, 2.0, 3.0], [10.0, 20.0, 40.0]],
        C=[1.0, 2.0, -1.0],
        expected=[[1.75, 5.5, -0.75], [3.75, 17.5, -8.75]],
    ),
    # dynamic relative offsets phi_p(q_i) = 0.25 * h_i with h = [2, 4, -4]: offsets [0.5, 1, -1]
    #   p = [0.5, 2, 1] -> m = [0.5*2 + 0.5*4, h[2], h[1]] = [3, -4, 4]; gamma = 1, C = 1
    "dynamic-relative-offset": dict(
        cfg=dict(num_heads=1, num_points=1),
        params={"phi_p.weight": [[[0.25]]], "phi_p.bias": [[0.0]], "gamma": [[1.0]]},
        h=[[2.0, 4.0, -4.0]],
        C=[1.0, 1.0, 1.0],
        expected=[[3.0, -4.0, 4.0]],
    ),
    # absolute: p = (L - 1) * sigmoid(ln 3) = 3 * 3/4 = 2.25 for every token, h = [1, 2, 4, 8]:
    #   m = 0.75*4 + 0.25*8 = 5; gamma = 1, C = [1, 2, 3, 4] -> [5, 10, 15, 20]
    "absolute-position": dict(
        cfg=dict(num_heads=1, num_points=1, selection="static", offset_mode="absolute"),
        params={"static_offsets": [[[LN3]]], "gamma": [[1.0]]},
        h=[[1.0, 2.0, 4.0, 8.0]],
        C=[1.0, 2.0, 3.0, 4.0],
        expected=[[5.0, 10.0, 15.0, 20.0]],
    ),
}


@pytest.mark.parametrize("case", list(HAND_CASES), ids=list(HAND_CASES))
def test_hand_worked_case(backend, case):
    spec = HAND_CASES[case]
    d_inner, length = len(spec["h"]), len(spec["C"])
    module = AdaptorT(d_inner, 1, MambaAdaptorConfig(**spec["cfg"]), num_directions=1).to(DEVICE, F64)
    with torch.no_grad():
        for p in module.parameters():  # identity init leaves spread offsets: zero everything first
            p.zero_()
        params = dict(module.named_parameters())
        for name, value in spec["params"].items():
            params[name].copy_(torch.tensor(value, dtype=F64))
        hs = torch.tensor(spec["h"], dtype=F64, device=DEVICE).view(1, d_inner, 1, length)
        Cs = torch.tensor(spec["C"], dtype=F64, device=DEVICE).view(1, 1, 1, length)
        ys = spec.get("ys")
        ys = None if ys is None else torch.tensor(ys, dtype=F64, device=DEVICE).view(1, d_inner, length)
        out = module(hs, Cs, 1, length, ys=ys)
    expected = torch.tensor(spec["expected"], dtype=F64, device=DEVICE).view(1, d_inner, length)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
