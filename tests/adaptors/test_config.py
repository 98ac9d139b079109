"""MambaAdaptorConfig: validation, JSON round trip, and a behaviour test for every field."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from adaptor_peft.adaptors import MambaAdaptorConfig, adaptor_state_dict, find_ss2d, inject_adaptors

INVALID = [
    ({"num_points": 0}, "num_points"),
    ({"num_points": 2.5}, "num_points"),
    ({"num_heads": 0}, "num_heads"),
    ({"kernel_size": 4}, "kernel_size"),
    ({"kernel_size": 0}, "kernel_size"),
    ({"dilations": ()}, "dilations"),
    ({"dilations": (1, 0)}, "dilations"),
    ({"dilations": (-2,)}, "dilations"),
    ({"dilations": (1.5,)}, "dilations"),
    ({"offset_mode": "normalized"}, "offset_mode"),
    ({"selection": "learned"}, "selection"),
    ({"aggregation": "concat"}, "aggregation"),
    ({"init": "zeros"}, "init"),
    ({"phi_input": "mean"}, "phi_input"),
    ({"offset_init_spread": -1.0}, "offset_init_spread"),
    ({"offset_init_spread": float("nan")}, "offset_init_spread"),
    ({"offset_init_spread": "1"}, "offset_init_spread"),
    ({"stages": ("2",)}, "stages"),
    ({"blocks": (-1,)}, "blocks"),
    ({"blocks": (1.0,)}, "blocks"),
    ({"modules_to_save": ("",)}, "modules_to_save"),
    ({"temporal": 1}, "temporal"),
    ({"residual": "yes"}, "residual"),
    ({"train_head": None}, "train_head"),
    ({"temporal": False, "spatial": False}, "temporal and .spatial"),
]


@pytest.mark.parametrize(("kwargs", "field"), INVALID)
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"MambaAdaptorConfig\.{field}"):
        MambaAdaptorConfig(**kwargs)


def test_json_round_trip_is_exact():
    cfg = MambaAdaptorConfig(
        num_points=3,
        dilations=[1, 4],
        stages=[0, -1],
        blocks=["layers.2.*", 3],
        modules_to_save=["patch_embed"],
    )
    assert cfg.dilations == (1, 4) and cfg.blocks == ("layers.2.*", 3)
    text = cfg.to_json()
    assert json.loads(text)["dilations"] == [1, 4]
    assert MambaAdaptorConfig.from_json(text) == cfg
    assert MambaAdaptorConfig.from_dict(cfg.to_dict()) == cfg
    assert MambaAdaptorConfig.from_json(MambaAdaptorConfig().to_json()) == MambaAdaptorConfig()


def test_from_dict_rejects_unknown_keys_and_bad_json():
    with pytest.raises(ValueError, match=r"unknown MambaAdaptorConfig field\(s\) \['num_pts'\]"):
        MambaAdaptorConfig.from_dict({"num_pts": 3})
    with pytest.raises(ValueError, match="malformed"):
        MambaAdaptorConfig.from_json("{not json")
    with pytest.raises(ValueError, match="num_points"):
        MambaAdaptorConfig.from_dict({"num_points": -1})


# ------------------------------------------------------------------------------------------------
# Every field changes behaviour. Each variant is compared with the same model injected with the base
# config under the same seed; "random" init makes the adaptor path visible in the logits.
# ------------------------------------------------------------------------------------------------

BASE = {"init": "random"}
VARIANTS = {
    # field: (overrides, what must change)
    "temporal": ({"temporal": False}, "keys"),
    "spatial": ({"spatial": False}, "keys"),
    "num_points": ({"num_points": 2}, "logits"),
    "num_heads": ({"num_heads": 4}, "logits"),
    "offset_mode": ({"offset_mode": "absolute"}, "logits"),
    "selection": ({"selection": "static"}, "logits"),
    "share_across_directions": ({"share_across_directions": False}, "logits"),
    "offset_init_spread": ({"offset_init_spread": 3.0}, "logits"),
    "phi_input": ({"phi_input": "state_mean"}, "logits"),  # on the N = 16 model
    "dilations": ({"dilations": (2, 3, 5)}, "logits"),
    "kernel_size": ({"kernel_size": 5}, "logits"),
    "aggregation": ({"aggregation": "sum"}, "logits"),
    "residual": ({"residual": False}, "logits"),
    "stages": ({"stages": (0, 1)}, "keys"),
    "blocks": ({"blocks": ("layers.2.*",)}, "keys"),
    "t_stages": ({"t_stages": (0,)}, "keys"),
    "s_stages": ({"s_stages": (-1,)}, "keys"),
    "init": ({"init": "identity"}, "logits"),
    "train_head": ({"train_head": False}, "trainable"),
    "train_norms": ({"train_norms": False}, "trainable"),  # the default is True
    "train_biases": ({"train_biases": True}, "trainable"),
    "modules_to_save": ({"modules_to_save": ("patch_embed.*",)}, "trainable"),
}


def test_every_field_has_a_behaviour_test():
    assert set(VARIANTS) == {f.name for f in dataclasses.fields(MambaAdaptorConfig)}


def _observe(build, name, x, overrides):
    torch.manual_seed(1)
    model = inject_adaptors(build(name), MambaAdaptorConfig(**{**BASE, **overrides}))
    with torch.no_grad():
        logits = model(x)
    return {
        "logits": logits,
        "keys": sorted(k for k in model.state_dict() if "adaptor" in k),
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "saved": sorted(adaptor_state_dict(model)),
        "model": model,
    }


@pytest.mark.parametrize("field", list(VARIANTS))
def test_field_changes_behaviour(build_conformance_model, conformance_io, field):
    overrides, what = VARIANTS[field]
    name = "small_v0_ln" if field == "phi_input" else "small_v05noz_ln2d"
    x = conformance_io[name]["rect.input"]
    base = _observe(build_conformance_model, name, x, {})
    variant = _observe(build_conformance_model, name, x, overrides)
    if what == "logits":
        assert (variant["logits"] - base["logits"]).abs().max().item() > 1e-5
    elif what == "keys":
        assert variant["keys"] != base["keys"]
    else:  # the trainable set and the saved tensors follow the config
        assert variant["trainable"] != base["trainable"]
        assert variant["saved"] == variant["trainable"]


def test_phi_input_and_static_selection_shapes(build_conformance_model):
    # small_v0_ln: d_state 16; phi sees D*N features ("state") or D ("state_mean")
    model = inject_adaptors(
        build_conformance_model("small_v0_ln"), MambaAdaptorConfig(phi_input="state_mean")
    )
    op = find_ss2d(model)[0][1]
    assert op.adaptor_t.phi_c.weight.shape == (1, 8, op.d_inner)
    model = inject_adaptors(build_conformance_model("small_v0_ln"), MambaAdaptorConfig(selection="static"))
    t = find_ss2d(model)[0][1].adaptor_t
    assert not hasattr(t, "phi_p") and t.static_offsets.shape == (1, 2, 4)
    assert t.phi_c.weight.shape == (1, 8, t.d_inner * 16)
    # identity init spread: head s, point k -> -+(k//2 + 1) * (s + 1) * spread
    torch.testing.assert_close(
        t.static_offsets[0], torch.tensor([[-1.0, 1.0, -2.0, 2.0], [-2.0, 2.0, -4.0, 4.0]])
    )
