"""Adaptor files on a toy backend: round trip, every rejection, fuzzing, atomic writes, describe."""

from __future__ import annotations

import json
import os
import random
import warnings

import pytest
import torch
from io_toy import (
    ToyAdaptorConfig,
    join_file,
    make_base,
    make_trained,
    rewrite,
    same_snapshot,
    split_file,
    state_snapshot,
    toy_adaptor_state_dict,
    toy_inject,
)

import adaptor_peft.io as aio

X = torch.randn(5, 8, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def saved(tmp_path, toy_api):
    """A trained toy model and its adaptor file."""
    model = make_trained()
    path = aio.save_adaptors(model, tmp_path / "toy.safetensors", metadata={"task": "unit"})
    return model, path


def _assert_rejected(exc_cls, path, key, model, fn=None):
    before = state_snapshot(model)
    with pytest.raises(exc_cls) as info:
        (fn or (lambda: aio.load_adaptors(model, path)))()
    msg = str(info.value)
    assert str(path) in msg, msg
    assert key in msg, msg
    assert same_snapshot(before, state_snapshot(model)), "a failed load modified the model"
    return info.value


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_fresh_base_bit_identical(saved):
    model, path = saved
    fresh = make_base()
    out = aio.load_adaptors(fresh, path)
    assert out is fresh
    assert fresh.adaptor_config == model.adaptor_config
    src, dst = toy_adaptor_state_dict(model), toy_adaptor_state_dict(fresh)
    assert src.keys() == dst.keys()
    for k in src:
        assert torch.equal(src[k], dst[k]) and src[k].dtype == dst[k].dtype, k
    assert torch.equal(model(X), fresh(X))
    # only adaptors + head trainable after loading onto a plain base
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n in dict(fresh.named_parameters()) if "adaptor_s" in n or n.startswith("head.")
    }


def test_round_trip_into_model_with_same_adaptors(saved):
    model, path = saved
    target = toy_inject(make_base(), ToyAdaptorConfig(rank=2))
    aio.load_adaptors(target, path)
    assert torch.equal(model(X), target(X))


def test_header_contents(saved):
    model, path = saved
    header, tensors = aio.read_adaptor_file(path)
    assert header.format_version == aio.FORMAT_VERSION
    assert header.library_version == __import__("adaptor_peft").__version__
    assert header.config == {"rank": 2, "dilation": 1}
    assert header.base_architecture == "toy_net"
    assert header.include_head is True
    assert header.head_keys == ["head.bias", "head.weight"]
    assert header.user_metadata == {"task": "unit"}
    assert set(tensors) == set(toy_adaptor_state_dict(model))
    assert header.tensors["head.weight"] == {"dtype": "F32", "shape": [3, 8]}
    # the fingerprint covers exactly the frozen base tensors (no adaptor, no head)
    assert set(header.base_fingerprint["tensors"]) == {
        "blocks.0.op.proj.weight",
        "blocks.0.op.proj.bias",
        "blocks.1.op.proj.weight",
        "blocks.1.op.proj.bias",
    }


def test_without_head(tmp_path, toy_api):
    model = make_trained()
    path = aio.save_adaptors(model, tmp_path / "nohead.safetensors", include_head=False)
    header, tensors = aio.read_adaptor_file(path)
    assert not any(k.startswith("head.") for k in tensors)
    fresh = make_base(num_classes=3)
    head_before = fresh.head.weight.clone()
    aio.load_adaptors(fresh, path)
    assert torch.equal(fresh.head.weight, head_before)  # head untouched
    for k, v in tensors.items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_fingerprint_ignores_trained_head(tmp_path, toy_api):
    """A base whose head differs (e.g. other num_classes) still matches when the head is not saved."""
    model = make_trained()
    path = aio.save_adaptors(model, tmp_path / "nohead.safetensors", include_head=False)
    other_head = make_base(num_classes=7)
    other_head.head.weight.data.normal_()
    head_before = {k: v.clone() for k, v in other_head.head.state_dict().items()}
    assert aio.load_adaptors(other_head, path) is other_head
    # the adaptor tensors are the trained ones, the 7-class head is left as it was
    trained = toy_adaptor_state_dict(model, include_head=False)
    loaded = toy_adaptor_state_dict(other_head, include_head=False)
    assert (
        sorted(loaded)
        == sorted(trained)
        == [f"blocks.{i}.op.adaptor_s.{m}.weight" for i in (0, 1) for m in ("down", "up")]
    )
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert all(torch.equal(v, head_before[k]) for k, v in other_head.head.state_dict().items())
    # ... while a base that differs outside the head is still refused: the fingerprint is checked
    other_block = make_base(num_classes=7)
    other_block.blocks[1].op.proj.bias.data[0] += 1.0
    _assert_rejected(aio.BaseFingerprintMismatchError, path, "blocks.1.op.proj.bias", other_block)


def test_save_requires_adaptors(tmp_path, toy_api):
    with pytest.raises(ValueError, match="inject_adaptors"):
        aio.save_adaptors(make_base(), tmp_path / "x.safetensors")


def test_atomic_write_keeps_old_file(tmp_path, toy_api, monkeypatch):
    model = make_trained()
    path = aio.save_adaptors(model, tmp_path / "a.safetensors")
    old = path.read_bytes()
    model.head.bias.data += 1

    def boom(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", boom)
        with pytest.raises(OSError, match="disk full"):
            aio.save_adaptors(model, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]  # no temp file left
    aio.save_adaptors(model, path)
    assert path.read_bytes() != old


# ------------------------------------------------------------------------------------------ rejections
def test_reject_missing_file(tmp_path, toy_api):
    _assert_rejected(aio.AdaptorFileUnreadableError, tmp_path / "nope.safetensors", "not found", make_base())


def test_reject_truncated(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for cut in (4, 8 + 10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"trunc{cut}.safetensors"
        bad.write_bytes(data[:cut])
        key = "[head.weight]" if cut == len(data) - 1 else "[header]"  # cut data names the tensor
        err = _assert_rejected(aio.AdaptorFileError, bad, key, make_base())
        assert isinstance(err, (aio.AdaptorFileCorruptError, aio.AdaptorFileUnreadableError))
        assert "truncated" in str(err) or "fewer than" in str(err)


def test_reject_random_bytes(tmp_path, toy_api):
    bad = tmp_path / "random.safetensors"
    bad.write_bytes(random.Random(0).randbytes(4096))
    _assert_rejected(aio.AdaptorFileCorruptError, bad, "[header]", make_base())
    bad.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"{not json at all, just bytes!!!}" + b"\x00" * 8)
    _assert_rejected(aio.AdaptorHeaderError, bad, "[header]", make_base())


def test_reject_header_lying_about_offsets(saved, tmp_path):
    _, path = saved
    header, body = split_file(path.read_bytes())
    name = sorted(k for k in header if k != "__metadata__")[0]
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 4, e + 4]
    bad = tmp_path / "offsets.safetensors"
    bad.write_bytes(join_file(header, body))
    _assert_rejected(aio.AdaptorHeaderError, bad, name, make_base())


def test_reject_header_lying_about_dtype_size(saved, tmp_path):
    _, path = saved
    header, body = split_file(path.read_bytes())
    header["head.weight"]["dtype"] = "F16"
    bad = tmp_path / "dtype.safetensors"
    bad.write_bytes(join_file(header, body))
    err = _assert_rejected(aio.AdaptorHeaderError, bad, "head.weight", make_base())
    assert "F16" in str(err)


def test_reject_header_lying_about_dtype_same_size(saved, tmp_path):
    _, path = saved
    header, body = split_file(path.read_bytes())
    header["head.weight"]["dtype"] = "I32"  # same byte count: only the tensor table exposes the lie
    bad = tmp_path / "dtype32.safetensors"
    bad.write_bytes(join_file(header, body))
    _assert_rejected(aio.AdaptorHeaderError, bad, "head.weight", make_base())


def test_reject_missing_tensor(saved, tmp_path):
    _, path = saved
    key = "blocks.1.op.adaptor_s.up.weight"
    bad = rewrite(path, tmp_path / "missing.safetensors", edit_tensors=lambda t: t.pop(key) is None)
    _assert_rejected(aio.MissingTensorError, bad, key, make_base())


def test_missing_tensor_non_strict_warns(saved, tmp_path):
    model, path = saved
    key = "blocks.1.op.adaptor_s.up.weight"
    bad = rewrite(path, tmp_path / "missing.safetensors", edit_tensors=lambda t: t.pop(key) is None)
    fresh = make_base()
    with pytest.warns(UserWarning, match="blocks.1.op.adaptor_s.up.weight"):
        aio.load_adaptors(fresh, bad, strict=False)
    assert torch.equal(fresh.state_dict()[key], torch.zeros_like(model.state_dict()[key]))
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_reject_extra_tensor(saved, tmp_path):
    _, path = saved
    key = "blocks.2.op.adaptor_s.up.weight"

    def add(t):
        t[key] = torch.zeros(8, 2)

    bad = rewrite(path, tmp_path / "extra.safetensors", edit_tensors=add)
    _assert_rejected(aio.UnexpectedTensorError, bad, key, make_base())


def test_reject_shape_mismatch(saved, tmp_path):
    _, path = saved
    key = "blocks.0.op.adaptor_s.down.weight"

    def grow(t):
        t[key] = torch.zeros(3, 8)

    bad = rewrite(path, tmp_path / "shape.safetensors", edit_tensors=grow)
    err = _assert_rejected(aio.TensorShapeMismatchError, bad, key, make_base())
    assert "[3, 8]" in str(err) and "[2, 8]" in str(err)


def test_reject_dtype_mismatch(saved, tmp_path):
    _, path = saved
    key = "head.bias"

    def half(t):
        t[key] = t[key].to(torch.float16)

    bad = rewrite(path, tmp_path / "dtype.safetensors", edit_tensors=half)
    err = _assert_rejected(aio.TensorDtypeMismatchError, bad, key, make_base())
    assert "F16" in str(err) and "F32" in str(err)


def test_reject_other_architecture(saved):
    _, path = saved
    err = _assert_rejected(
        aio.BaseArchitectureMismatchError, path, aio.META_BASE_ARCHITECTURE, make_base(arch="toy_xl")
    )
    assert "toy_net" in str(err) and "toy_xl" in str(err)


def test_reject_other_layout_same_name(saved):
    _, path = saved
    wider = make_base(c=16)  # same architecture name, different tensor shapes
    _assert_rejected(aio.BaseArchitectureMismatchError, path, "blocks.0.op.proj", wider)


def test_reject_other_base_weights(saved):
    _, path = saved
    other = make_base(seed=1)
    err = _assert_rejected(aio.BaseFingerprintMismatchError, path, "blocks.0.op.proj.bias", other)
    assert aio.META_BASE_FINGERPRINT in str(err)


def test_allow_base_mismatch_warns_and_loads(saved):
    model, path = saved
    other = make_base(seed=1)
    with pytest.warns(UserWarning, match="allow_base_mismatch"):
        aio.load_adaptors(other, path, allow_base_mismatch=True)
    for k, v in toy_adaptor_state_dict(model).items():
        assert torch.equal(other.state_dict()[k], v)


def test_reject_nan(saved, tmp_path):
    _, path = saved
    key = "blocks.0.op.adaptor_s.up.weight"

    def poison(t):
        t[key][0, 0] = float("nan")
        t[key][1, 1] = float("inf")

    bad = rewrite(path, tmp_path / "nan.safetensors", edit_tensors=poison)
    err = _assert_rejected(aio.NonFiniteTensorError, bad, key, make_base())
    assert "2 of 16" in str(err)


def test_reject_unknown_format_version(saved, tmp_path):
    _, path = saved

    def bump(m):
        m[aio.META_FORMAT_VERSION] = "99"

    bad = rewrite(path, tmp_path / "v99.safetensors", edit_meta=bump)
    err = _assert_rejected(aio.AdaptorFormatVersionError, bad, aio.META_FORMAT_VERSION, make_base())
    assert "'99'" in str(err)


@pytest.mark.parametrize("field", aio.REQUIRED_FIELDS[1:])
def test_reject_missing_metadata_field(saved, tmp_path, field):
    _, path = saved
    bad = rewrite(path, tmp_path / "nofield.safetensors", edit_meta=lambda m: m.pop(field) and None)
    _assert_rejected(aio.AdaptorMetadataError, bad, field, make_base())


def test_reject_plain_checkpoint(tmp_path, toy_api):
    from safetensors.torch import save_file

    ckpt = tmp_path / "model.safetensors"
    save_file(make_base().state_dict(), str(ckpt))
    err = _assert_rejected(aio.AdaptorMetadataError, ckpt, aio.META_FORMAT_VERSION, make_base())
    assert "not an adaptor file" in str(err)


def test_reject_invalid_config(saved, tmp_path):
    _, path = saved

    def bad_rank(m):
        m[aio.META_CONFIG] = json.dumps({"rank": 0, "dilation": 1})

    bad = rewrite(path, tmp_path / "cfg.safetensors", edit_meta=bad_rank)
    _assert_rejected(aio.AdaptorMetadataError, bad, aio.META_CONFIG, make_base())


def test_reject_config_mismatch_on_injected_model(saved, tmp_path):
    _, path = saved
    target = toy_inject(make_base(), ToyAdaptorConfig(rank=2, dilation=3))  # same shapes, other behaviour
    _assert_rejected(aio.AdaptorConfigMismatchError, path, "dilation", target)


def test_reject_changed_data_checksum(saved, tmp_path):
    _, path = saved

    def nudge(t):
        t["head.bias"][0] += 1.0

    bad = rewrite(path, tmp_path / "tampered.safetensors", edit_tensors=nudge, resign=False)
    _assert_rejected(aio.AdaptorChecksumError, bad, aio.META_CONTENT_SHA256, make_base())


# ------------------------------------------------------------------------------------------ fuzzing
def _mutations(data: bytes, rng: random.Random):
    """Seeded mutations of a valid file: byte flips, truncations, insertions, header JSON edits."""
    n = int.from_bytes(data[:8], "little")
    kind = rng.randrange(6)
    buf = bytearray(data)
    if kind == 0:  # flip bytes anywhere
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # flip bytes inside the header JSON
        for _ in range(rng.randint(1, 3)):
            buf[8 + rng.randrange(n)] = rng.randrange(256)
    elif kind == 2:  # truncate
        del buf[rng.randrange(len(buf)) :]
    elif kind == 3:  # insert or delete bytes
        i = rng.randrange(len(buf))
        if rng.random() < 0.5:
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        else:
            del buf[i : i + rng.randint(1, 16)]
    elif kind == 4:  # structured header edit: change a number / dtype / key in the JSON
        header, body = split_file(data)
        names = sorted(k for k in header if k != "__metadata__")
        name = rng.choice(names)
        field = rng.choice(["dtype", "shape", "data_offsets", "rename", "drop", "meta"])
        if field == "dtype":
            header[name]["dtype"] = rng.choice(["F16", "BF16", "I32", "F64", "U8", "Q4"])
        elif field == "shape":
            header[name]["shape"] = [d + rng.choice([-1, 1]) for d in header[name]["shape"]] or [1]
        elif field == "data_offsets":
            header[name]["data_offsets"] = [o + rng.randint(-8, 8) for o in header[name]["data_offsets"]]
        elif field == "rename":
            header[name + "x"] = header.pop(name)
        elif field == "drop":
            header.pop(name)
        else:
            meta = header["__metadata__"]
            k = rng.choice(sorted(meta))
            meta[k] = rng.choice(["", "{}", "[]", "1", "null", meta[k][: len(meta[k]) // 2], meta[k] + "x"])
        return join_file(header, body)
    else:  # length prefix edits
        buf[:8] = (n + rng.randint(-64, 64)).to_bytes(8, "little", signed=True)
    return bytes(buf)


def test_fuzz_loader_only_raises_adaptor_file_error(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    rng = random.Random(1234)
    target = make_base()
    outcomes = {"rejected": 0, "loaded": 0}
    for case in range(400):
        mutated = _mutations(data, rng)
        bad = tmp_path / f"fuzz{case % 4}.safetensors"
        bad.write_bytes(mutated)
        before = state_snapshot(target)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                aio.load_adaptors(target, bad)
        except aio.AdaptorFileError as exc:
            outcomes["rejected"] += 1
            assert str(bad) in str(exc)
            assert same_snapshot(before, state_snapshot(target)), (
                f"case {case}: failed load modified the model"
            )
        else:
            # only a byte-identical-in-effect mutation may load; start the next case from a plain base
            outcomes["loaded"] += 1
            assert mutated == data or torch.isfinite(target(X)).all()
            target = make_base()
    assert outcomes["rejected"] >= 390, outcomes


# ------------------------------------------------------------------------------------------ describe
def test_describe_adaptor_file(saved):
    _, path = saved
    text = aio.describe_file(path)
    assert "adaptor file" in text and "toy_net" in text
    assert "rank: 2" in text
    assert "blocks.0.op.adaptor_s.down.weight" in text and "[2, 8]" in text
    assert "total: 6 tensors" in text
    assert f"{path.stat().st_size:,} bytes" in text


def test_describe_checkpoint(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "model.safetensors"
    save_file(make_base().state_dict(), str(ckpt))
    text = aio.describe_file(ckpt)
    assert "safetensors file" in text and "head.weight" in text and "total: 6 tensors" in text


def test_describe_unreadable(tmp_path):
    with pytest.raises(aio.AdaptorFileUnreadableError):
        aio.describe_file(tmp_path / "missing.safetensors")


def test_fingerprint_hashes_every_byte():
    """Per-tensor digests are sha256 of the full raw bytes (checked with hashlib here), and one changed
    element anywhere, even the last of a tensor, changes the values digest (no sampling). The speed
    claim (30M parameters well under a second) is measured by benchmarks/fingerprint_speed.py."""
    import hashlib

    from adaptor_peft.io.fingerprint import fingerprint_tensors

    g = torch.Generator().manual_seed(3)
    tensors = {f"t{i}": torch.randn(1000 + i, generator=g) for i in range(5)}
    tensors["half"] = torch.randn(3, 7, generator=g).half()
    fp = fingerprint_tensors(tensors)
    assert fp["num_tensors"] == 6
    for name, t in tensors.items():
        digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
        layout = f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}".replace(" ", "")
        assert fp["tensors"][name] == f"{layout}:{digest[:12]}", name
    assert fingerprint_tensors(dict(reversed(tensors.items()))) == fp  # order-independent
    for name in ("t0", "t4", "half"):
        changed = {k: v.clone() for k, v in tensors.items()}
        changed[name].view(-1)[-1] += 1
        other = fingerprint_tensors(changed)
        assert other["values"] != fp["values"] and other["structure"] == fp["structure"], name
    assert fingerprint_tensors(dict(tensors, t9=torch.zeros(1)))["structure"] != fp["structure"]


def test_content_digest_covers_metadata_and_bytes():
    t = {"a": torch.ones(2)}
    d0 = aio.content_digest({"k": "v"}, t)
    assert d0 != aio.content_digest({"k": "w"}, t)
    assert d0 != aio.content_digest({"k": "v"}, {"a": torch.tensor([1.0, 1.0000001])})
    assert d0 == aio.content_digest({"k": "v", aio.META_CONTENT_SHA256: "x"}, t)


def test_describe_pickle_checkpoint(tmp_path):
    ckpt = tmp_path / "model.pth"
    torch.save({"model": make_base().state_dict()}, ckpt)
    text = aio.describe_file(ckpt)
    assert "checkpoint" in text and "blocks.0.op.proj.weight" in text and "[8, 8]" in text


def test_save_refuses_nan_and_writes_normal_permissions(tmp_path, toy_api):
    import stat

    model = make_trained()
    path = aio.save_adaptors(model, tmp_path / "ok.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    model.head.bias.data[0] = float("nan")
    with pytest.raises(ValueError, match=r"'head.bias': 1 of 3 values are NaN/Inf"):
        aio.save_adaptors(model, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def test_directory_and_peft_file_hints(tmp_path, toy_api):
    from safetensors.torch import save_file

    (tmp_path / "adapter_config.json").write_text("{}")
    err = _assert_rejected(aio.AdaptorFileUnreadableError, tmp_path, "PeftModel.from_pretrained", make_base())
    assert "is a directory" in str(err)
    peft_file = tmp_path / "adapter_model.safetensors"
    save_file({"x": torch.zeros(1)}, str(peft_file), metadata={"format": "pt"})
    _assert_rejected(aio.AdaptorMetadataError, peft_file, "PeftModel.from_pretrained", make_base())
