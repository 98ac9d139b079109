"""Adaptor files with the issue-16 config fields (init="random_phi", t_stages, s_stages), and old files.

Oracles: the saving model's tensors and logits (bit-identical after a load into a fresh base), and a
file whose stored config is rewritten to the pre-issue-16 field set (no t_stages / s_stages keys),
which must load exactly as a file with every stage adapted.
"""

from __future__ import annotations

import json

import torch
from io_toy import rewrite

import adaptor_peft.io as aio
from adaptor_peft.adaptors import MambaAdaptorConfig, adaptor_state_dict, inject_adaptors
from adaptor_peft.models import create_model

X = torch.randn(1, 3, 32, 24, generator=torch.Generator().manual_seed(5))


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_vmamba").eval()


def _trained(config: MambaAdaptorConfig) -> torch.nn.Module:
    model = inject_adaptors(_base(), config)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for t in adaptor_state_dict(model).values():
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
    return model


def test_new_fields_round_trip(tmp_path):
    cfg = MambaAdaptorConfig(init="random_phi", t_stages=(0, -1), s_stages=(1,))
    model = _trained(cfg)
    path = aio.save_adaptors(model, tmp_path / "a.safetensors")
    header, tensors = aio.read_adaptor_file(path)
    assert header.config["t_stages"] == [0, -1] and header.config["s_stages"] == [1]
    assert header.config["init"] == "random_phi"
    blocks_t = sorted({k.split(".op.")[0] for k in tensors if ".op.adaptor_t." in k})
    blocks_s = sorted({k.split(".op.")[0] for k in tensors if ".op.adaptor_s." in k})
    assert blocks_t == ["layers.0.blocks.0", "layers.3.blocks.0"]
    assert blocks_s == ["layers.1.blocks.0"]
    fresh = _base()
    aio.load_adaptors(fresh, path)
    assert fresh.adaptor_config == cfg
    src, dst = adaptor_state_dict(model), adaptor_state_dict(fresh)
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))


def test_file_without_new_fields_still_loads(tmp_path):
    model = _trained(MambaAdaptorConfig())
    path = aio.save_adaptors(model, tmp_path / "new.safetensors")

    def drop_new_fields(meta):
        cfg = json.loads(meta[aio.META_CONFIG])
        assert cfg.pop("t_stages") is None and cfg.pop("s_stages") is None
        meta[aio.META_CONFIG] = json.dumps(cfg, sort_keys=True)
        return meta

    old = rewrite(path, tmp_path / "old.safetensors", edit_meta=drop_new_fields)
    header, _ = aio.read_adaptor_file(old)
    assert "t_stages" not in header.config and "s_stages" not in header.config
    fresh = _base()
    aio.load_adaptors(fresh, old)
    assert fresh.adaptor_config == MambaAdaptorConfig()
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))
    # and into a model that already carries the default adaptors (the config check compares fields)
    injected = inject_adaptors(_base(), MambaAdaptorConfig())
    aio.load_adaptors(injected, old)
    with torch.no_grad():
        assert torch.equal(injected(X), model(X))
