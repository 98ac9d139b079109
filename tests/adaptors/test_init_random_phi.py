"""init="random_phi" (issue 16): gamma = 0 with random predictor weights, LoRA-style.

Oracles: the un-injected model's logits (identity within 1e-6), peft's LoRA-A bound 1/sqrt(fan_in)
written out here, and the gradient semantics worked out in AdaptorT.reset_parameters: on the first
backward d out/d phi = C . (gamma * dm/dphi) = 0 exactly while d out/d gamma = C . m != 0; after one
optimizer step (gamma != 0) both predictors get a non-zero gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from adaptor_peft.adaptors import MambaAdaptorConfig, find_ss2d, inject_adaptors

CONFORMANCE_MODELS = ("small_v05noz_ln2d", "small_v0_ln")
VARIANTS = {
    "default": {},
    "per_direction_absolute": {"share_across_directions": False, "offset_mode": "absolute"},
    "static": {"selection": "static"},
}


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_identity_at_injection(build_conformance_model, conformance_io, name, variant):
    model = build_conformance_model(name)
    x = conformance_io[name]["rect.input"]
    with torch.no_grad():
        base = model(x)
        inject_adaptors(model, MambaAdaptorConfig(init="random_phi", **VARIANTS[variant]))
        adapted = model(x)
    assert (adapted - base).abs().max().item() <= 1e-6
    for _, op, _ in find_ss2d(model):
        t = op.adaptor_t
        assert torch.count_nonzero(t.gamma) == 0
        # the predictors really are random (a forgotten init would leave zeros and still pass above)
        bound = 1.0 / math.sqrt(t.phi_c.weight.shape[-1])
        phis = [t.phi_c] + ([t.phi_p] if variant != "static" else [])
        for phi in phis:
            w = phi.weight
            assert w.abs().max().item() <= bound
            assert abs(w.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3)
        assert torch.count_nonzero(t.phi_c.bias) == 0  # uniform coefficients from the bias, as identity


def test_random_phi_changes_the_output_once_gamma_moves(build_conformance_model, conformance_io):
    """With the same non-zero gamma, random_phi and identity give different logits (phi is in use)."""
    x = conformance_io["small_v05noz_ln2d"]["rect.input"]
    logits = {}
    for init in ("identity", "random_phi"):
        model = build_conformance_model("small_v05noz_ln2d")
        inject_adaptors(model, MambaAdaptorConfig(init=init, spatial=False))
        with torch.no_grad():
            for _, op, _ in find_ss2d(model):
                op.adaptor_t.gamma.fill_(5.0)
            logits[init] = model(x)
    assert (logits["identity"] - logits["random_phi"]).abs().max().item() > 1e-5


@pytest.mark.parametrize("variant", ["default", "per_direction_absolute"])
def test_predictor_gradients_first_and_second_backward(build_conformance_model, variant):
    model = build_conformance_model("small_v05noz_ln2d")
    inject_adaptors(model, MambaAdaptorConfig(init="random_phi", **VARIANTS[variant]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 32, 48, generator=g), torch.randint(0, 10, (2,), generator=g)
    adaptors = [op.adaptor_t for _, op, _ in find_ss2d(model)]

    torch.nn.functional.cross_entropy(model(x), y).backward()
    for t in adaptors:  # first backward: gamma = 0 blocks every path to phi, gamma itself learns
        assert t.gamma.grad.abs().max().item() > 0
        assert torch.count_nonzero(t.phi_p.weight.grad) == 0
        assert torch.count_nonzero(t.phi_c.weight.grad) == 0
    opt.step()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for t in adaptors:  # second backward: gamma != 0, both predictors learn
        assert torch.count_nonzero(t.gamma) > 0
        assert t.phi_p.weight.grad.abs().max().item() > 0
        assert t.phi_c.weight.grad.abs().max().item() > 0


def test_random_phi_static_keeps_spread_offsets(build_conformance_model):
    """Static selection: phi_c random, the learned offsets start at the identity init's spread."""
    spread = {}
    for init in ("identity", "random_phi"):
        model = build_conformance_model("small_v05noz_ln2d")
        inject_adaptors(model, MambaAdaptorConfig(init=init, selection="static"))
        spread[init] = [op.adaptor_t.static_offsets.clone() for _, op, _ in find_ss2d(model)]
    for a, b in zip(spread["identity"], spread["random_phi"]):
        assert torch.equal(a, b)
    # hand-worked first block: head 0 -> -1, +1, -2, +2; head 1 -> -2, +2, -4, +4 (spread 1.0)
    assert spread["random_phi"][0][0].tolist() == [[-1.0, 1.0, -2.0, 2.0], [-2.0, 2.0, -4.0, 4.0]]
