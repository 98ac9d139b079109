"""Checkpoint loading: formats, legacy names, 4-D 1x1 weights, pickle safety, mismatch errors, conversion."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adaptor_peft.models import (
    CheckpointError,
    CheckpointMismatchError,
    UntrustedCheckpointError,
    convert_checkpoint,
    create_model,
    load_checkpoint,
)
from adaptor_peft.models.checkpoint import normalize_state_dict


class FakeCfgNode(dict):
    """Stands in for the yacs CfgNode the official training script pickles next to the weights."""


def _config(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["config"])


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _legacy(sd: dict) -> dict:
    """January-2024 names (docs/vmamba.md §3)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k = k.replace(".norm.", ".ln_1.") if ".blocks." in k and ".op." not in k else k
        k = k.replace(".op.", ".self_attention.")
        k = k.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        out[k] = v
    return out


def test_legacy_names_in_model_wrapped_pth(tmp_path, v0_file, v0_io):
    sd = load_file(str(v0_file))
    legacy = _legacy(sd)
    assert "layers.0.blocks.0.self_attention.A_logs" in legacy and "norm.weight" in legacy
    assert "layers.0.blocks.0.ln_1.weight" in legacy and "patch_embed.proj.weight" in legacy
    path = tmp_path / "legacy.pth"
    torch.save({"model": legacy, "epoch": 3, "max_accuracy": 0.5}, path)
    model = create_model(_config(v0_file), checkpoint=path)
    torch.testing.assert_close(
        _logits(model, v0_io["rect.input"]), v0_io["rect.logits"], atol=1e-5, rtol=1e-4
    )


def test_4d_linear_weights_in_plain_pth(tmp_path, v05_file, v05_io):
    sd = load_file(str(v05_file))
    n4 = 0
    for k in list(sd):
        if k.endswith(("in_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")):
            sd[k] = sd[k][:, :, None, None].clone()
            n4 += 1
    assert n4 == 5 * 4  # 5 blocks x (in_proj, out_proj, fc1, fc2)
    path = tmp_path / "plain4d.pth"
    torch.save(sd, path)
    loaded = load_checkpoint(path)
    assert loaded["layers.0.blocks.0.op.in_proj.weight"].shape == (16, 16)
    model = create_model(_config(v05_file), checkpoint=path)
    torch.testing.assert_close(_logits(model, v05_io["sq.input"]), v05_io["sq.logits"], atol=1e-5, rtol=1e-4)


def test_safetensors_and_prefixes_load_identically(tmp_path, v05_file):
    ref = load_file(str(v05_file))
    assert load_checkpoint(v05_file).keys() == ref.keys()
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.items()}}, path)
    got = load_checkpoint(path)
    assert list(got) == list(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    mm = normalize_state_dict({"backbone." + k: v for k, v in ref.items()} | {"neck.w": torch.zeros(1)})
    assert list(mm) == list(ref)


def test_wrong_variant_names_file_and_keys(v0_file):
    with pytest.raises(CheckpointMismatchError) as exc:
        create_model("test_vmamba", checkpoint=v0_file)
    msg = str(exc.value)
    assert str(v0_file) in msg
    assert "missing (first 10): patch_embed.5.weight" in msg
    assert "unexpected (first 10): layers.0.blocks.0.op.conv2d.bias" in msg
    assert "layers.0.blocks.0.op.A_logs: checkpoint [64, 16] vs model [64, 1]" in msg
    assert "58 missing, 13 unexpected, 31 shape-mismatched keys" in msg
    assert isinstance(exc.value, ValueError)


def test_head_only_mismatch_hint_and_num_classes_drop(v05_file, v05_io):
    from adaptor_peft.models import load_into_model

    model = create_model("test_vmamba", num_classes=3)
    with pytest.raises(CheckpointMismatchError, match="only the head differs"):
        load_into_model(model, load_file(str(v05_file)), source=v05_file)
    with pytest.warns(UserWarning, match="head has 10 classes and the model 3"):
        model = create_model("test_vmamba", checkpoint=v05_file, num_classes=3)
    ref = load_file(str(v05_file))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref if not k.startswith("classifier.head."))
    assert model.get_classifier().out_features == 3
    # num_classes=None keeps the checkpoint head; full logits match.
    model = create_model("test_vmamba", checkpoint=v05_file)
    torch.testing.assert_close(_logits(model, v05_io["sq.input"]), v05_io["sq.logits"], atol=1e-5, rtol=1e-4)


def test_foreign_pickle_needs_trust(tmp_path, v05_file):
    sd = load_file(str(v05_file))
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "config": FakeCfgNode(MODEL="vssm")}, path)
    with pytest.raises(UntrustedCheckpointError) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value)
    assert "trust_pickle=True" in str(exc.value) and "adaptor-peft convert" in str(exc.value)
    assert isinstance(exc.value, pickle.UnpicklingError)
    got = load_checkpoint(path, trust_pickle=True)
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad_st)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(notdict)


def test_convert_pth_to_safetensors_infers_config(tmp_path, v05_file, v05_io):
    import timm

    # A released-layout checkpoint: the test_vmamba layout is not a released variant, so pass the config.
    sd = load_file(str(v05_file))
    src = tmp_path / "official.pth"
    torch.save({"model": _legacy(sd), "config": FakeCfgNode()}, src)
    with pytest.raises(UntrustedCheckpointError):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    dst = convert_checkpoint(src, tmp_path / "out.safetensors", trust_pickle=True, config=_config(v05_file))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    model = create_model(dst)  # config from metadata, weights from the same file
    torch.testing.assert_close(
        _logits(model, v05_io["rect.input"]), v05_io["rect.logits"], atol=1e-5, rtol=1e-4
    )
    # Released variants are recognised from their keys and shapes alone (head size aside).
    from adaptor_peft.models.factory import infer_variant

    for name in ("vmamba_tiny_s2l5", "vanilla_vmamba_small"):
        with torch.device("meta"):
            sd = timm.create_model(name, num_classes=7).state_dict()
        assert infer_variant(sd) == name
    assert infer_variant(load_file(str(v05_file))) is None
