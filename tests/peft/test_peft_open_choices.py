"""The peft route with the issue-16 fields: t_stages / s_stages place the hooks, the config round-trips."""

from __future__ import annotations

import json

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils.save_and_load import get_peft_model_state_dict

import adaptor_peft.peft_tuner as pt
from adaptor_peft.models import create_model

X = torch.randn(1, 3, 32, 24, generator=torch.Generator().manual_seed(3))


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_vmamba").eval()


def _hooked(model, hook: str) -> list[str]:
    names = {n.split(f".op.{hook}.")[0] for n, _ in model.named_parameters() if f".op.{hook}." in n}
    return sorted(n.removeprefix("base_model.model.") for n in names)


def test_stage_fields_place_hooks_and_round_trip(tmp_path):
    cfg = pt.MambaAdaptorPeftConfig(t_stages=[0], s_stages=[-1], init="random_phi", train_head=False)
    pm = get_peft_model(_base(), cfg)
    assert _hooked(pm, "adaptor_t") == ["layers.0.blocks.0"]
    assert _hooked(pm, "adaptor_s") == ["layers.3.blocks.0"]
    assert pm.targeted_module_names == ["layers.0.blocks.0.op", "layers.3.blocks.0.op"]
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".mamba_adaptor_modules." in name:
                p.add_(0.05)
    expected = pm(X)
    pm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["t_stages"] == [0] and saved["s_stages"] == [-1] and saved["init"] == "random_phi"
    loaded = PeftConfig.from_pretrained(str(tmp_path))
    assert loaded.to_adaptor_config() == pm.peft_config["default"].to_adaptor_config()
    reloaded = PeftModel.from_pretrained(_base(), str(tmp_path))
    a, b = get_peft_model_state_dict(pm), get_peft_model_state_dict(reloaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(reloaded(X), expected)
