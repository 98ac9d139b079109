"""Adaptor-file rejections that safetensors alone would let through or word without a name.

Each bad file is one hand edit of a good one (its header JSON written out by hand, bytes appended, one
metadata field or one stored tensor changed), next to a control: the same rebuild without the edit
loads. The expected error class, key and wording come from the reader's documented contract.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from io_toy import make_base, make_trained, rewrite, same_snapshot, split_file, state_snapshot

import adaptor_peft.io as aio


@pytest.fixture
def saved(tmp_path, toy_api):
    """A trained toy model and its adaptor file."""
    model = make_trained()
    return model, aio.save_adaptors(model, tmp_path / "toy.safetensors")


def _file(header_text: str, body: bytes) -> bytes:
    """A safetensors blob from header JSON text written here (so it may hold what json.dumps cannot)."""
    raw = header_text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + body


def _entries_text(pairs: list[tuple[str, object]]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


def _rejected(exc_cls, path, key):
    """load_adaptors refuses ``path`` with ``exc_cls`` naming the file and ``key``; the model is untouched."""
    model = make_base()
    before = state_snapshot(model)
    with pytest.raises(exc_cls) as info:
        aio.load_adaptors(model, path)
    msg = str(info.value)
    assert str(path) in msg and f"[{key}]" in msg, msg
    assert same_snapshot(before, state_snapshot(model)), "a failed load modified the model"
    return info.value


def _loads(path, trained):
    """Control: ``path`` loads, and gives back exactly the trained adaptor tensors."""
    fresh = aio.load_adaptors(make_base(), path)
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


# ------------------------------------------------------------------------------- container (reader)
def test_trailing_bytes_after_last_tensor_are_named(saved, tmp_path):
    model, path = saved
    data = path.read_bytes()
    bad = tmp_path / "trailing.safetensors"
    bad.write_bytes(data + b"\x00" * 8)  # 8 zero bytes after the data of the last tensor
    err = _rejected(aio.AdaptorFileCorruptError, bad, "header")
    assert not isinstance(err, aio.AdaptorHeaderError), "the header itself is fine: the data is not"
    assert "trailing bytes" in str(err), err
    _, body = split_file(data)
    assert f"holds {len(body) + 8}" in str(err) and f"cover {len(body)}" in str(err), err


def test_header_naming_a_tensor_twice_is_refused(saved, tmp_path):
    model, path = saved
    header, body = split_file(path.read_bytes())
    pairs = list(header.items())
    name = "blocks.0.op.adaptor_s.up.weight"
    # control: the same header written out by hand, once per name, loads
    good = tmp_path / "handwritten.safetensors"
    good.write_bytes(_file(_entries_text(pairs), body))
    _loads(good, model)
    # the same entry a second time (identical, so safetensors sees one consistent tensor)
    twice = pairs + [(name, header[name])]
    bad = tmp_path / "duplicate.safetensors"
    bad.write_bytes(_file(_entries_text(twice), body))
    err = _rejected(aio.AdaptorHeaderError, bad, "header")
    assert "duplicate key" in str(err) and repr(name) in str(err), err


def test_header_entry_with_an_unknown_field_is_refused(saved, tmp_path):
    model, path = saved
    header, body = split_file(path.read_bytes())
    name = "head.bias"
    header[name] = {**header[name], "foo": 1}  # dtype, shape, data_offsets unchanged
    bad = tmp_path / "extra_field.safetensors"
    bad.write_bytes(_file(_entries_text(list(header.items())), body))
    err = _rejected(aio.AdaptorHeaderError, bad, name)
    assert "exactly dtype, shape and data_offsets" in str(err), err


# ------------------------------------------------------------------------------- metadata (header)
def test_format_version_zero_is_refused(saved, tmp_path):
    model, path = saved
    control = rewrite(path, tmp_path / "v1.safetensors")  # same rewrite, version left at "1"
    _loads(control, model)

    def older(meta):
        assert meta[aio.META_FORMAT_VERSION] == "1"
        meta[aio.META_FORMAT_VERSION] = "0"

    bad = rewrite(path, tmp_path / "v0.safetensors", edit_meta=older)
    err = _rejected(aio.AdaptorFormatVersionError, bad, aio.META_FORMAT_VERSION)
    assert "'0'" in str(err), err


# ------------------------------------------------------------------------------- tensors vs the model
def test_transposed_shape_with_the_same_element_count_is_refused(saved, tmp_path):
    model, path = saved
    key = "blocks.0.op.adaptor_s.down.weight"  # (rank 2, channels 8) in the model

    def transpose(t):
        assert tuple(t[key].shape) == (2, 8)
        t[key] = t[key].t().contiguous()  # (8, 2): 16 elements, like (2, 8)

    bad = rewrite(path, tmp_path / "transposed.safetensors", edit_tensors=transpose)
    err = _rejected(aio.TensorShapeMismatchError, bad, key)
    assert "[8, 2]" in str(err) and "[2, 8]" in str(err), err


@pytest.mark.parametrize(
    ("key", "model_dtype", "file_dtype", "file_tag", "model_tag"),
    [
        ("head.bias", torch.float32, torch.int32, "I32", "F32"),  # both 4 bytes per element
        ("head.weight", torch.float16, torch.bfloat16, "BF16", "F16"),  # both 2 bytes per element
    ],
)
def test_dtype_of_the_same_size_is_refused(
    tmp_path, toy_api, key, model_dtype, file_dtype, file_tag, model_tag
):
    model = make_trained()
    model.head.to(model_dtype)  # the model's own head dtype; the file stores the other same-size dtype
    path = aio.save_adaptors(model, tmp_path / "toy.safetensors")

    def retype(t):
        assert t[key].dtype == model_dtype
        t[key] = t[key].to(file_dtype)

    bad = rewrite(path, tmp_path / "retyped.safetensors", edit_tensors=retype)
    fresh = make_base()
    fresh.head.to(model_dtype)
    before = state_snapshot(fresh)
    with pytest.raises(aio.TensorDtypeMismatchError) as info:
        aio.load_adaptors(fresh, bad)
    msg = str(info.value)
    assert f"[{key}]" in msg and file_tag in msg and model_tag in msg, msg
    assert same_snapshot(before, state_snapshot(fresh)), "a failed load modified the model"


@pytest.mark.parametrize("layout", ["peft", "checkpoint"])
def test_info_refuses_an_oversized_json_in_a_folder_before_reading_it(tmp_path, layout):
    # an 8 MiB sparse file where a few-hundred-byte JSON belongs: refused for its size, not parsed
    name = "adapter_config.json" if layout == "peft" else "manifest.json"
    with open(tmp_path / name, "wb") as f:
        f.truncate(8 << 20)
    with pytest.raises(aio.AdaptorMetadataError) as err:
        aio.describe_file(tmp_path)
    assert name in str(err.value) and "more than the 1,048,576 accepted" in str(err.value)
