"""Optional MMDetection / mmsegmentation registration (never a hard dependency)."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import adaptor_peft  # noqa: F401
from adaptor_peft.dense.mm_registry import MM_BACKBONE_NAME, MambaAdaptorPyramid, register_mm_backbones
from adaptor_peft.dense.pyramid import build_pyramid


class _FakeRegistry:
    def __init__(self) -> None:
        self.modules: dict[str, type] = {}

    def register_module(self, name: str, module: type, force: bool = False) -> type:
        if name in self.modules and not force:
            raise KeyError(f"{name} is already registered")
        self.modules[name] = module
        return module


def test_nothing_registered_without_mm_packages(monkeypatch):
    for name in ("mmdet", "mmdet.registry", "mmseg", "mmseg.registry"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import raise ImportError
    assert register_mm_backbones() == []


def test_registers_into_an_mm_registry_and_builds_from_a_config(monkeypatch, tmp_path):
    registry = _FakeRegistry()
    package = types.ModuleType("mmseg")
    module = types.ModuleType("mmseg.registry")
    module.MODELS = registry
    monkeypatch.setitem(sys.modules, "mmseg", package)
    monkeypatch.setitem(sys.modules, "mmseg.registry", module)
    monkeypatch.setitem(sys.modules, "mmdet", None)
    assert register_mm_backbones() == ["mmseg"]
    assert registry.modules == {MM_BACKBONE_NAME: MambaAdaptorPyramid}
    with pytest.raises(KeyError, match="already registered"):
        register_mm_backbones()
    assert register_mm_backbones(force=True) == ["mmseg"]

    cls = timm.create_model("test_vmamba")
    path = tmp_path / "cls.safetensors"
    save_file({k: v.contiguous() for k, v in cls.state_dict().items()}, str(path))
    adaptor = dict(num_heads=2, num_points=2, train_norms=False)  # frozen base, norms too (default: trained)
    cfg = dict(arch="test_vmamba", out_indices=(1, 2, 3), adaptor=adaptor,
               init_cfg=dict(type="Pretrained", checkpoint=str(path)))  # fmt: skip
    backbone = registry.modules[MM_BACKBONE_NAME](**cfg)
    backbone.init_weights()
    torch.testing.assert_close(
        backbone.body.layers[1].blocks[0].op.x_proj_weight, cls.layers[1].blocks[0].op.x_proj_weight
    )
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert isinstance(feats, tuple) and [tuple(f.shape) for f in feats] == [
        (1, 32, 8, 8),
        (1, 64, 4, 4),
        (1, 128, 2, 2),
    ]
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".adaptor_" in n or ".outnorm" in n for n in trainable)


MM_DIR = Path(__file__).resolve().parents[2] / "recipes" / "mm"


@pytest.mark.parametrize("config", sorted(p.name for p in MM_DIR.glob("*.py")))
def test_mm_config_channels_match_the_backbone(config):
    namespace: dict = {}
    exec(
        compile((MM_DIR / config).read_text(), config, "exec"), namespace
    )  # plain dicts, like mmengine reads
    model = namespace.get("model")
    if model is None:  # a schedule-only child config
        assert namespace["_base_"] == ["./mask_rcnn_mamba_adaptor_b2_fpn_1x_coco.py"]
        return
    backbone = model["backbone"]
    assert backbone["type"] == MM_BACKBONE_NAME
    assert namespace["custom_imports"]["imports"] == ["adaptor_peft.dense.mm_register"]
    with torch.device("meta"):
        body = build_pyramid(
            backbone["arch"], backbone["out_indices"], drop_path_rate=backbone["drop_path_rate"]
        )
    if "neck" in model:
        assert model["neck"]["in_channels"] == body.out_channels
    else:
        assert model["decode_head"]["in_channels"] == body.out_channels
        assert model["auxiliary_head"]["in_channels"] == body.out_channels[2]


def test_mm_register_module_registers_on_import(monkeypatch):
    registry = _FakeRegistry()
    module = types.ModuleType("mmdet.registry")
    module.MODELS = registry
    monkeypatch.setitem(sys.modules, "mmdet", types.ModuleType("mmdet"))
    monkeypatch.setitem(sys.modules, "mmdet.registry", module)
    monkeypatch.setitem(sys.modules, "mmseg", None)
    monkeypatch.delitem(sys.modules, "adaptor_peft.dense.mm_register", raising=False)
    mod = importlib.import_module("adaptor_peft.dense.mm_register")
    assert mod.REGISTERED == ["mmdet"] and registry.modules == {MM_BACKBONE_NAME: MambaAdaptorPyramid}
