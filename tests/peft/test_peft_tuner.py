"""The registered peft tuner: mapping contract, get_peft_model, save/load, named adapters, disable, unload."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields

import peft
import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.save_and_load import get_peft_model_state_dict

import adaptor_peft.peft_tuner as pt
from adaptor_peft.adaptors import MambaAdaptorConfig, adaptor_state_dict, inject_adaptors
from adaptor_peft.models import SS2D, create_model

X = torch.randn(1, 3, 32, 24, generator=torch.Generator().manual_seed(3))


def _base(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_vmamba").eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def _perturb(model, adapter: str, seed: int) -> None:
    """Give adapter `adapter` (adaptors and its head copy) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    marks = (f".mamba_adaptor_modules.{adapter}.", f".modules_to_save.{adapter}.")
    with torch.no_grad():
        hit = 0
        for name, p in model.named_parameters():
            if any(m in name for m in marks):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
                hit += 1
    assert hit


@pytest.fixture(scope="module")
def base_logits():
    return _logits(_base())


# ---------------------------------------------------------------------------------- mapping contract
def test_peft_mapping_contract():
    """Fails loudly if peft changes the tables or lookups our registration uses (docs/ecosystem.md §1.4)."""
    from peft import mapping

    key = pt.AdaptorPeftType.MAMBA_ADAPTOR
    assert key.name == key.value == "MAMBA_ADAPTOR" and hash(key) == hash("MAMBA_ADAPTOR")
    for table in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING"):
        assert isinstance(getattr(mapping, table), dict), table
    # lookups by the plain JSON string, as adapter_config.json stores it
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING["MAMBA_ADAPTOR"] is pt.MambaAdaptorPeftConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING["MAMBA_ADAPTOR"] is pt.MambaAdaptorModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING["MAMBA_ADAPTOR"] == "mamba_adaptor_"
    assert peft.PEFT_TYPE_TO_CONFIG_MAPPING is mapping.PEFT_TYPE_TO_CONFIG_MAPPING
    assert "MAMBA_ADAPTOR" not in peft.PeftType.__members__  # we never edit peft's enum
    # the config factory and the hooks we override still exist with the signatures we use
    assert PeftConfig.from_peft_type(peft_type="MAMBA_ADAPTOR").__class__ is pt.MambaAdaptorPeftConfig
    for hook in (
        "inject_adapter",
        "_create_and_replace",
        "_unload_and_optionally_merge",
        "_check_merge_allowed",
    ):
        assert hasattr(BaseTuner, hook), hook
    assert {"model", "adapter_name", "state_dict"} <= set(
        inspect.signature(BaseTuner.inject_adapter).parameters
    )
    assert set(inspect.signature(BaseTuner._remove_adapter_name_from_key).parameters) == {
        "key",
        "adapter_name",
    }
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig())
    assert isinstance(pm.base_model, pt.MambaAdaptorModel)


def test_peft_config_reuses_adaptor_fields():
    own = {f.name for f in fields(MambaAdaptorConfig)}
    assert own <= {f.name for f in fields(pt.MambaAdaptorPeftConfig)}
    cfg = pt.MambaAdaptorPeftConfig(num_points=3, dilations=[1, 2], stages=[0, 1], task_type=None)
    assert cfg.to_adaptor_config() == MambaAdaptorConfig(num_points=3, dilations=(1, 2), stages=(0, 1))
    assert pt.MambaAdaptorPeftConfig.from_adaptor_config(cfg.to_adaptor_config()).to_adaptor_config() == (
        cfg.to_adaptor_config()
    )
    with pytest.raises(ValueError, match="num_points"):
        pt.MambaAdaptorPeftConfig(num_points=0)
    assert pt.MambaAdaptorPeftConfig(train_biases=True).bias == "all"


# ---------------------------------------------------------------------------------- get_peft_model
def test_identity_at_init_and_structure(base_logits):
    # frozen norms: only the head is wrapped (trained norms are too: test_train_biases_and_norms_extras)
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig(train_norms=False))
    torch.testing.assert_close(_logits(pm), base_logits, atol=1e-6, rtol=0)
    ops = [m for m in pm.modules() if isinstance(m, SS2D)]
    assert len(ops) == 5 and all(isinstance(op.adaptor_t, pt.MambaAdaptorLayer) for op in ops)
    assert all(isinstance(op.adaptor_s, pt.MambaAdaptorLayer) for op in ops)
    assert pm.targeted_module_names == [
        f"layers.{s}.blocks.{b}.op" for s, b in ((0, 0), (1, 0), (2, 0), (2, 1), (3, 0))
    ]
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".mamba_adaptor_modules.default." in n or ".modules_to_save.default." in n for n in trainable
    )
    # base parameter names are untouched (adaptors sit in the hooks, only the head is wrapped by peft)
    plain = {k for k in _base().state_dict() if not k.startswith("classifier.head.")}
    keys = {k.removeprefix("base_model.model.") for k in pm.state_dict()}
    assert plain <= keys


def test_stage_selection_targets_only_those_blocks():
    pm = get_peft_model(
        _base(), pt.MambaAdaptorPeftConfig(stages=(-1,), temporal=False, train_head=False, train_norms=False)
    )
    assert pm.targeted_module_names == ["layers.3.blocks.0.op"]
    assert not any("adaptor_t" in n for n, _ in pm.named_parameters())
    assert not any("modules_to_save" in n for n, _ in pm.named_parameters())


def test_disable_adapter_gives_base_logits_exactly(base_logits):
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig())
    _perturb(pm, "default", 1)
    adapted = _logits(pm)
    assert not torch.allclose(adapted, base_logits, atol=1e-4)
    with pm.disable_adapter():
        assert torch.equal(_logits(pm), base_logits)
    assert torch.equal(_logits(pm), adapted)


def test_peft_layer_matches_plain_injection():
    """The peft container computes exactly what inject_adaptors computes with the same weights."""
    cfg = MambaAdaptorConfig(num_heads=4, dilations=(1, 2))
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig.from_adaptor_config(cfg))
    _perturb(pm, "default", 2)
    plain = inject_adaptors(_base(), cfg)
    peft_sd = {k.removeprefix("base_model.model."): v for k, v in pm.state_dict().items()}
    with torch.no_grad():
        for k, t in adaptor_state_dict(plain).items():
            src = k.replace(".adaptor_t.", ".adaptor_t.mamba_adaptor_modules.default.")
            src = src.replace(".adaptor_s.", ".adaptor_s.mamba_adaptor_modules.default.")
            if src == k:  # head and (default train_norms=True) norms: peft's ModulesToSaveWrapper copy
                module, _, leaf = k.rpartition(".")
                src = f"{module}.modules_to_save.default.{leaf}"
            t.copy_(peft_sd[src])
    assert torch.equal(_logits(pm), _logits(plain))


# ---------------------------------------------------------------------------------- save / load
def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig(num_points=3))
    _perturb(pm, "default", 3)
    expected = _logits(pm)
    pm.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    saved_cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved_cfg["peft_type"] == "MAMBA_ADAPTOR" and saved_cfg["num_points"] == 3
    assert saved_cfg["dilations"] == [1, 2, 3]
    loaded_cfg = PeftConfig.from_pretrained(str(tmp_path))
    assert isinstance(loaded_cfg, pt.MambaAdaptorPeftConfig)
    assert loaded_cfg.to_adaptor_config() == pm.peft_config["default"].to_adaptor_config()

    reloaded = PeftModel.from_pretrained(_base(), str(tmp_path))
    a, b = get_peft_model_state_dict(pm), get_peft_model_state_dict(reloaded)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(".default." not in k for k in a)  # adapter name stripped from saved keys
    assert torch.equal(_logits(reloaded), expected)


def test_two_named_adapters_switch(tmp_path, base_logits):
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig())
    pm.add_adapter("other", pt.MambaAdaptorPeftConfig(temporal=False, dilations=(2, 4)))
    _perturb(pm, "default", 4)
    _perturb(pm, "other", 5)
    y_default = _logits(pm)
    pm.set_adapter("other")
    y_other = _logits(pm)
    assert not torch.allclose(y_default, y_other, atol=1e-4)
    # only the active adapter trains
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".other." in n for n in trainable)
    pm.set_adapter("default")
    assert torch.equal(_logits(pm), y_default)
    with pm.disable_adapter():
        assert torch.equal(_logits(pm), base_logits)

    pm.save_pretrained(tmp_path)  # "other" goes to tmp_path/other
    fresh = PeftModel.from_pretrained(_base(), str(tmp_path))
    fresh.load_adapter(str(tmp_path / "other"), adapter_name="other")
    assert torch.equal(_logits(fresh), y_default)
    fresh.set_adapter("other")
    assert torch.equal(_logits(fresh), y_other)


def test_unload_restores_plain_model(base_logits):
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig(train_head=False, train_norms=False))
    _perturb(pm, "default", 6)
    model = pm.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert all(
        op.adaptor_t is None and op.adaptor_s is None for op in model.modules() if isinstance(op, SS2D)
    )
    assert list(model.state_dict()) == list(_base().state_dict())
    assert torch.equal(_logits(model), base_logits)


def test_merge_and_unload_refuses_clearly():
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig())
    _perturb(pm, "default", 7)
    before = _logits(pm)
    with pytest.raises(NotImplementedError, match="neither is a delta of an existing base weight"):
        pm.merge_and_unload()
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        pm.merge_adapter()
    assert torch.equal(_logits(pm), before)  # nothing half-unloaded


def test_refuses_model_with_plain_adaptors():
    model = inject_adaptors(_base(), MambaAdaptorConfig())
    del model.adaptor_config  # even without the marker, the occupied hook is detected
    with pytest.raises(ValueError, match="remove_adaptors"):
        get_peft_model(model, pt.MambaAdaptorPeftConfig())


def test_train_biases_and_norms_extras(tmp_path):
    cfg = pt.MambaAdaptorPeftConfig(train_head=False, train_norms=True, train_biases=True)
    pm = get_peft_model(_base(), cfg)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any(n.endswith("out_norm.modules_to_save.default.weight") for n in trainable)
    assert any(n.endswith("in_proj.bias") or n.endswith("patch_embed.0.bias") for n in trainable)
    pm.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("out_norm" in k for k in keys) and any(k.endswith(".bias") and "mamba" not in k for k in keys)


def test_describe_peft_directory(tmp_path):
    from adaptor_peft.io import describe_file

    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig(temporal=False))
    pm.add_adapter("other", pt.MambaAdaptorPeftConfig(temporal=False))
    pm.save_pretrained(tmp_path)
    text = describe_file(tmp_path)
    assert "peft adapter directory" in text and "peft_type: MAMBA_ADAPTOR" in text
    assert "base_model.model.layers.0.blocks.0.op.adaptor_s.mamba_adaptor_modules.convs.0.weight" in text
    assert "other named adapters (sub-folders): other" in text
    with pytest.raises(ValueError, match="save_pretrained"):
        from adaptor_peft.io import save_adaptors

        save_adaptors(pm.base_model.model, tmp_path / "x.safetensors")


def test_inject_adapter_in_model_wrapper_free():
    from peft import inject_adapter_in_model
    from peft.utils.save_and_load import set_peft_model_state_dict

    trained = inject_adapter_in_model(pt.MambaAdaptorPeftConfig(), _base())
    assert type(trained).__name__ == "VSSM"  # same module, adaptors injected, no PeftModel wrapper
    _perturb(trained, "default", 8)
    state = get_peft_model_state_dict(trained)
    fresh = inject_adapter_in_model(pt.MambaAdaptorPeftConfig(), _base())
    result = set_peft_model_state_dict(fresh, state)
    assert result.unexpected_keys == []
    assert torch.equal(_logits(fresh), _logits(trained))


def test_v0_layout_n16_static_per_direction(conformance_dir, tmp_path):
    """Vanilla v0 (channel-last, gated, d_state 16) with static, per-direction, state-mean Adaptor-T."""
    path = conformance_dir / "small_v0_ln.safetensors"
    base = create_model(path).eval()
    base_logits = _logits(base)
    cfg = pt.MambaAdaptorPeftConfig(
        init="random", share_across_directions=False, selection="static", phi_input="state_mean"
    )
    pm = get_peft_model(base, cfg)
    adapted = _logits(pm)
    assert not torch.allclose(adapted, base_logits, atol=1e-4)
    with pm.disable_adapter():
        assert torch.equal(_logits(pm), base_logits)
    pm.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(create_model(path).eval(), str(tmp_path))
    assert torch.equal(_logits(reloaded), adapted)


def test_second_adapter_gets_its_own_extras():
    cfg = dict(train_norms=True, modules_to_save=("patch_embed.0",))
    pm = get_peft_model(_base(), pt.MambaAdaptorPeftConfig(**cfg))
    pm.add_adapter("other", pt.MambaAdaptorPeftConfig(**cfg))
    names = [n for n, _ in pm.named_parameters()]
    copies = {a: sum(f".modules_to_save.{a}." in n for n in names) for a in ("default", "other")}
    assert copies["default"] == copies["other"] > 0
    assert "base_model.model.patch_embed.0.modules_to_save.other.weight" in names
    with pytest.raises(ValueError, match="modules_to_save: pattern 'nope.*' matches no module"):
        pm.add_adapter("third", pt.MambaAdaptorPeftConfig(modules_to_save=("nope.*",)))
    assert "third" not in pm.peft_config


def test_get_peft_model_accepts_plain_config(base_logits):
    pm = pt.get_peft_model(_base(), MambaAdaptorConfig(spatial=False, num_points=2))
    assert isinstance(pm, PeftModel) and isinstance(pm.peft_config["default"], pt.MambaAdaptorPeftConfig)
    assert pm.peft_config["default"].to_adaptor_config() == MambaAdaptorConfig(spatial=False, num_points=2)
    torch.testing.assert_close(_logits(pm), base_logits, atol=1e-6, rtol=0)
    assert pt.as_peft_config(pm.peft_config["default"]) is pm.peft_config["default"]
