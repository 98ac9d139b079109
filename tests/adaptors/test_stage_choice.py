"""t_stages / s_stages (issue 16): which stages carry Adaptor-T and Adaptor-S.

Oracle: the module names written out by hand for the conformance model small_v05noz_ln2d, whose
blocks are layers.0.blocks.0, layers.1.blocks.0, layers.2.blocks.{0,1}, layers.3.blocks.0.
"""

from __future__ import annotations

import re

import pytest
import torch

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.adaptors.spatial import AdaptorS
from adaptor_peft.adaptors.temporal import AdaptorT


def _names(model, cls) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, cls))


def _t(*blocks: str) -> list[str]:
    return sorted(f"{b}.op.adaptor_t" for b in blocks)


def _s(*blocks: str) -> list[str]:
    return sorted(f"{b}.op.adaptor_s" for b in blocks)


ALL = (
    "layers.0.blocks.0",
    "layers.1.blocks.0",
    "layers.2.blocks.0",
    "layers.2.blocks.1",
    "layers.3.blocks.0",
)


@pytest.mark.parametrize(
    ("kwargs", "want_t", "want_s"),
    [
        ({}, _t(*ALL), _s(*ALL)),
        (
            {"t_stages": (0, -1), "s_stages": (1, 2)},
            _t("layers.0.blocks.0", "layers.3.blocks.0"),
            _s("layers.1.blocks.0", "layers.2.blocks.0", "layers.2.blocks.1"),
        ),
        ({"t_stages": (2,)}, _t("layers.2.blocks.0", "layers.2.blocks.1"), _s(*ALL)),
        ({"t_stages": [0, 1], "spatial": False}, _t("layers.0.blocks.0", "layers.1.blocks.0"), []),
        # intersected with stages/blocks: stages 1-2, T on stage 2, S on stage 1; the *.blocks.1 filter
        (
            {"stages": (1, 2), "t_stages": (2,), "s_stages": (1,)},
            _t("layers.2.blocks.0", "layers.2.blocks.1"),
            _s("layers.1.blocks.0"),
        ),
        (
            {"blocks": ("*.blocks.1",), "t_stages": (2,), "s_stages": (2,)},
            _t("layers.2.blocks.1"),
            _s("layers.2.blocks.1"),
        ),
    ],
)
def test_adaptors_exactly_where_asked(build_conformance_model, conformance_io, kwargs, want_t, want_s):
    model = build_conformance_model("small_v05noz_ln2d")
    x = conformance_io["small_v05noz_ln2d"]["rect.input"]
    with torch.no_grad():
        base = model(x)
        inject_adaptors(model, MambaAdaptorConfig(**kwargs))
        assert (model(x) - base).abs().max().item() <= 1e-6  # still the identity
    assert _names(model, AdaptorT) == want_t
    assert _names(model, AdaptorS) == want_s
    trainable = {
        re.match(r"(.*\.op\.adaptor_[ts])\.", n).group(1)
        for n, p in model.named_parameters()
        if p.requires_grad and ".op.adaptor_" in n
    }
    assert trainable == set(want_t) | set(want_s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t_stages": ()}, r"t_stages must be a non-empty list"),
        ({"s_stages": "0"}, r"s_stages must be a non-empty list"),
        ({"t_stages": (0, "1")}, r"t_stages must be ints"),
        ({"t_stages": (True,)}, r"t_stages must be ints"),
        ({"temporal": False, "t_stages": (0,)}, r"t_stages=\[0\] but temporal is False"),
        ({"spatial": False, "s_stages": (1,)}, r"s_stages=\[1\] but spatial is False"),
    ],
)
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MambaAdaptorConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t_stages": (4,)}, r"t_stages: stage index 4 is out of range for a model with 4 stages"),
        ({"s_stages": (-5,)}, r"s_stages: stage index -5 is out of range"),
        (
            {"stages": (1, 2), "t_stages": (0,)},
            r"t_stages=\[0\] selects none of the blocks .*stages: \[1, 2\]",
        ),
        ({"blocks": ("*.blocks.1",), "s_stages": (3,)}, r"s_stages=\[3\] selects none of the blocks"),
    ],
)
def test_injection_rejects_and_leaves_model_untouched(build_conformance_model, kwargs, message):
    model = build_conformance_model("small_v05noz_ln2d")
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=message):
        inject_adaptors(model, MambaAdaptorConfig(**kwargs))
    assert list(model.state_dict()) == keys and getattr(model, "adaptor_config", None) is None


def test_config_round_trip_of_new_fields():
    cfg = MambaAdaptorConfig(t_stages=[0, -1], s_stages=(2,), init="random_phi")
    assert cfg.t_stages == (0, -1)
    data = cfg.to_dict()
    assert data["t_stages"] == [0, -1] and data["s_stages"] == [2] and data["init"] == "random_phi"
    assert MambaAdaptorConfig.from_json(cfg.to_json()) == cfg
    old = {k: v for k, v in MambaAdaptorConfig().to_dict().items() if k not in ("t_stages", "s_stages")}
    restored = MambaAdaptorConfig.from_dict(old)  # a dict written before the fields existed
    assert restored.t_stages is None and restored.s_stages is None and restored == MambaAdaptorConfig()
