"""The plain AdamW parameter groups (no layer_decay): every trainable parameter's peak lr, weight decay
and part, worked out here from its name alone (head / adaptor / base) and compared parameter by parameter."""

from __future__ import annotations

import pytest
import torch
from toy import TINY_VMAMBA

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.models import create_model
from adaptor_peft.train import load_recipe
from adaptor_peft.train.trainer import param_groups

HEAD = {"classifier.head.weight", "classifier.head.bias"}  # the tiny VMamba's classifier head
FROZEN = "patch_embed.0.weight"  # one base tensor left frozen: it must be in no group


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(dict(TINY_VMAMBA), num_classes=4)
    inject_adaptors(model, MambaAdaptorConfig(num_heads=2, num_points=2, dilations=(1, 2)), freeze_base=False)
    for n, p in model.named_parameters():
        p.requires_grad_(n != FROZEN)
    return model


def _expected(name: str, p: torch.nn.Parameter, lr: float, head_lr, base_lr, wd: float):
    """(part, peak lr, weight decay) of one parameter, from the documented rules."""
    if name in HEAD:
        part, peak = "head", head_lr if head_lr is not None else lr
    elif ".adaptor_" in f".{name}":
        part, peak = "adaptor", lr
    else:
        part, peak = "base", base_lr if base_lr is not None else lr
    no_decay = p.ndim <= 1 or name.endswith((".bias", ".A_logs", ".Ds"))
    return part, peak, 0.0 if no_decay else wd


@pytest.mark.parametrize(
    ("head_lr", "base_lr"),
    [
        pytest.param(0.03, 5e-4, id="base-lr-and-head-lr"),
        pytest.param(None, 2e-4, id="base-lr-only"),
        pytest.param(None, None, id="one-lr"),
    ],
)
def test_every_trainable_parameter_gets_its_part_lr_and_decay(head_lr, base_lr):
    lr, wd = 0.01, 0.05
    recipe = load_recipe(
        dict(model=TINY_VMAMBA, method="full", lr=lr, head_lr=head_lr, base_lr=base_lr, weight_decay=wd)
    )
    model = _model()
    names = {id(p): n for n, p in model.named_parameters()}
    got = {}
    for g in param_groups(model, recipe):
        for p in g["params"]:
            assert names[id(p)] not in got, f"{names[id(p)]} is in two groups"
            got[names[id(p)]] = (g["name"], g["lr"], g["weight_decay"])
    want = {n: _expected(n, p, lr, head_lr, base_lr, wd) for n, p in model.named_parameters() if n != FROZEN}
    assert FROZEN in names.values() and FROZEN not in got
    assert got == want
    # the three parts are all present, so every rule above was exercised
    parts = {part for part, _, _ in want.values()}
    assert parts == {"head", "adaptor", "base"}
    if base_lr is not None:
        assert {lr_ for part, lr_, _ in got.values() if part == "base"} == {base_lr}
