"""Adaptor files on real VMamba models with the real Mamba-Adaptor injection."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from io_toy import rewrite, same_snapshot, state_snapshot

import adaptor_peft.io as aio
from adaptor_peft.adaptors import MambaAdaptorConfig, adaptor_state_dict, inject_adaptors
from adaptor_peft.models import create_model

X = torch.randn(1, 3, 32, 24, generator=torch.Generator().manual_seed(5))  # rectangular, small


def _base(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_vmamba", **overrides).eval()


def _trained(config: MambaAdaptorConfig | None = None, seed: int = 0) -> torch.nn.Module:
    """Injected test_vmamba whose adaptor and head tensors hold non-trivial values."""
    model = inject_adaptors(_base(seed), config or MambaAdaptorConfig())
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for t in adaptor_state_dict(model).values():
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _trained()
    path = aio.save_adaptors(model, tmp_path_factory.mktemp("vm") / "pets.safetensors")
    return model, path


def test_round_trip_bit_identical_tensors_and_logits(saved):
    model, path = saved
    fresh = _base()
    with torch.no_grad():
        base_logits = fresh(X)
    aio.load_adaptors(fresh, path)
    src, dst = adaptor_state_dict(model), adaptor_state_dict(fresh)
    assert sorted(src) == sorted(dst)
    assert any(".op.adaptor_t." in k for k in src) and any(".op.adaptor_s." in k for k in src)
    assert "classifier.head.weight" in src
    for k in src:
        assert src[k].dtype == dst[k].dtype and torch.equal(src[k], dst[k]), k
    with torch.no_grad():
        out, ref = fresh(X), model(X)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, base_logits)  # the adaptors really do something
    assert fresh.adaptor_config == model.adaptor_config


def test_header_describes_base(saved):
    model, path = saved
    header, tensors = aio.read_adaptor_file(path)
    assert header.base_architecture == "test_vmamba"
    assert header.base_config["dims"] == [16, 32, 64, 128] and header.base_config["num_classes"] == 10
    assert MambaAdaptorConfig.from_dict(header.config) == model.adaptor_config
    assert header.head_keys == ["classifier.head.bias", "classifier.head.weight"]
    assert header.base_fingerprint["num_tensors"] == len(model.state_dict()) - len(tensors)
    text = aio.describe_file(path)
    assert "base architecture: test_vmamba" in text and "num_points: 4" in text


def test_file_holds_only_adaptor_tensors(saved):
    model, path = saved
    _, tensors = aio.read_adaptor_file(path)
    assert set(tensors) == set(adaptor_state_dict(model, include_head=True))


def test_reject_other_variant_by_name(saved, conformance_dir):
    _, path = saved
    other = create_model(conformance_dir / "small_v0_ln.safetensors").eval()  # vanilla v0 layout
    before = state_snapshot(other)
    with pytest.raises(aio.BaseArchitectureMismatchError) as info:
        aio.load_adaptors(other, path)
    assert str(path) in str(info.value) and aio.META_BASE_ARCHITECTURE in str(info.value)
    assert same_snapshot(before, state_snapshot(other))


def test_reject_other_variant_same_name(saved):
    _, path = saved
    deeper = _base(depths=[1, 1, 3, 1])  # still registered as test_vmamba, one more block
    before = state_snapshot(deeper)
    with pytest.raises(aio.BaseArchitectureMismatchError) as info:
        aio.load_adaptors(deeper, path)
    assert str(path) in str(info.value) and "layers.2.blocks.2" in str(info.value)
    assert same_snapshot(before, state_snapshot(deeper))


def test_reject_same_variant_other_weights(saved):
    _, path = saved
    other = _base(seed=1)
    before = state_snapshot(other)
    with pytest.raises(aio.BaseFingerprintMismatchError) as info:
        aio.load_adaptors(other, path)
    msg = str(info.value)
    assert str(path) in msg and aio.META_BASE_FINGERPRINT in msg and "first difference: base tensor" in msg
    assert same_snapshot(before, state_snapshot(other))
    with pytest.warns(UserWarning, match="allow_base_mismatch"):
        aio.load_adaptors(other, path, allow_base_mismatch=True)
    assert other.adaptor_config == MambaAdaptorConfig()


def test_reject_head_shape(saved):
    _, path = saved
    other_head = _base()
    other_head.reset_classifier(7)  # same backbone weights, a 7-class head
    with pytest.raises(aio.TensorShapeMismatchError) as info:
        aio.load_adaptors(other_head, path)
    assert "classifier.head" in str(info.value)


def test_reject_config_that_does_not_fit(saved, tmp_path):
    _, path = saved

    def bad_heads(meta):
        import json

        cfg = json.loads(meta[aio.META_CONFIG])
        cfg["num_heads"] = 3  # 3 does not divide d_inner=16
        meta[aio.META_CONFIG] = json.dumps(cfg)

    bad = rewrite(path, tmp_path / "heads.safetensors", edit_meta=bad_heads)
    target = _base()
    before = state_snapshot(target)
    with pytest.raises(aio.AdaptorMetadataError) as info:
        aio.load_adaptors(target, bad)
    assert (
        str(bad) in str(info.value) and aio.META_CONFIG in str(info.value) and "num_heads" in str(info.value)
    )
    assert same_snapshot(before, state_snapshot(target)) and not hasattr(target, "adaptor_config")


def test_reject_mismatching_injected_config(saved):
    _, path = saved
    target = inject_adaptors(_base(), MambaAdaptorConfig(dilations=(1, 3, 5)))  # same shapes, other dilations
    with pytest.raises(aio.AdaptorConfigMismatchError) as info:
        aio.load_adaptors(target, path)
    assert "dilations" in str(info.value)


def test_spatial_only_and_no_head(tmp_path):
    model = _trained(MambaAdaptorConfig(temporal=False, stages=(1, 2), train_norms=False))  # adaptors only
    path = aio.save_adaptors(model, tmp_path / "s.safetensors", include_head=False)
    _, tensors = aio.read_adaptor_file(path)
    assert tensors and all(".op.adaptor_s." in k and ("layers.1" in k or "layers.2" in k) for k in tensors)
    fresh = _base()
    aio.load_adaptors(fresh, path)
    assert not torch.equal(fresh.classifier.head.weight, model.classifier.head.weight)  # head not saved
    fresh.classifier.head.load_state_dict(model.classifier.head.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))


def _digest(model) -> tuple:
    """Cheap exact summary of everything a load could change: every state_dict byte (sha256), the
    requires_grad flags and the adaptor config."""
    from adaptor_peft.io.fingerprint import model_fingerprint

    flags = tuple(p.requires_grad for p in model.parameters())
    return model_fingerprint(model)["values"], flags, getattr(model, "adaptor_config", None)


def test_fuzz_real_file(saved, tmp_path):
    """Seeded mutations of a real adaptor file: only AdaptorFileError, and never a modified model."""
    from test_adaptor_file_toy import _mutations

    _, path = saved
    data = path.read_bytes()
    rng = random.Random(77)
    target = _base()
    before = _digest(target)
    rejected = 0
    for case in range(300):
        mutated = _mutations(data, rng)
        bad = tmp_path / "fuzz.safetensors"
        bad.write_bytes(mutated)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                aio.load_adaptors(target, bad)
        except aio.AdaptorFileError as exc:
            rejected += 1
            assert str(bad) in str(exc)
            assert _digest(target) == before, f"case {case}: a failed load modified the model"
        else:
            target = _base()
            before = _digest(target)
    assert rejected >= 290
