"""The nine released VMamba classifiers: exact key order, shapes, dtypes and parameter counts (on meta)."""

from __future__ import annotations

import pytest
import timm
import torch

import adaptor_peft.models  # noqa: F401  (registers the timm models)
from adaptor_peft.models import model_info
from adaptor_peft.models.vmamba import RELEASED_VARIANTS

NAMES = list(RELEASED_VARIANTS)


def test_all_nine_registered():
    assert len(NAMES) == 9
    assert set(NAMES) <= set(timm.list_models("*vmamba*"))
    assert "test_vmamba" in timm.list_models("test_vmamba")


@pytest.mark.parametrize("name", NAMES)
def test_keys_and_param_count_equal_release(released_keys, name):
    ref = released_keys[RELEASED_VARIANTS[name]["release_name"]]
    with torch.device("meta"):
        model = timm.create_model(name)
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == ref["keys"]
    assert len(got) == ref["num_keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_names_official_file(released_keys, name):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    official = released_keys[RELEASED_VARIANTS[name]["release_name"]]["checkpoint_file"]
    assert cfg["url"].endswith("/" + official)
    assert cfg["classifier"] == "classifier.head"
    assert cfg["first_conv"] == "patch_embed.0"
    assert cfg["input_size"] == (3, 224, 224)


def test_model_info_summarises_tiny():
    text = model_info("vmamba_tiny_s1l8")
    assert "30,249,064 parameters" in text
    assert "276 state_dict entries" in text
    assert "vssm1_tiny_0230s_ckpt_epoch_264.pth" in text
    assert "'v05_noz'" in text
