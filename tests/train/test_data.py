"""Data sources, preprocessing, errors, samplers."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from PIL import Image

from adaptor_peft.train.data import (
    DataError,
    EpochSampler,
    Preprocess,
    TransformedDataset,
    open_source,
    split_holdout,
    stratified_subset,
)
from adaptor_peft.train.recipes import load_recipe


def _recipe(**kw):
    return load_recipe(None, [f"{k}={v}" for k, v in kw.items()])


def test_npz_gray_is_padded_to_three_normalised_channels(tmp_path):
    x = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    np.savez(tmp_path / "d.npz", x=x.astype(np.uint8), y=np.array([0, 1]))
    src = open_source(tmp_path / "d.npz")
    assert len(src) == 2 and src.classes == ["0", "1"]
    pre = Preprocess(_recipe(img_size=32, mean="[0.5,0.5,0.5]", std="[0.25,0.25,0.25]"), train=False)
    t = pre(src.load(1))
    assert t.shape == (3, 32, 32)
    expect = (torch.from_numpy(x[1].astype(np.float32)) / 255.0 - 0.5) / 0.25
    torch.testing.assert_close(t[0, 2:30, 2:30], expect)
    torch.testing.assert_close(t[1], t[0])
    assert torch.all(t[:, :2, :] == -2.0)  # zero padding, normalised
    # the PIL path (used for RGB / folder images) gives the same tensor as the array fast path
    rgb = np.repeat(x[1].astype(np.uint8)[..., None], 3, axis=-1)
    torch.testing.assert_close(pre(Image.fromarray(rgb)), t)


def test_resize_mode_and_larger_images_are_resized(tmp_path):
    pre = Preprocess(_recipe(img_size=16, resize="resize"), train=False)
    assert pre(np.zeros((28, 28), np.uint8)).shape == (3, 16, 16)
    pre = Preprocess(_recipe(img_size=16), train=False)
    assert pre(np.zeros((40, 30, 3), np.uint8)).shape == (3, 16, 16)


def test_image_folder_classes_and_unreadable_image(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    src = open_source(tmp_path)
    assert src.classes == ["cat", "dog"] and list(src.labels) == [0, 0, 1, 1]
    assert np.asarray(src.load(3)).shape == (10, 12)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=rf"1 unreadable image\(s\): {bad} .*; set bad_images=skip"):
        open_source(tmp_path)  # small folders are scanned when opened
    src = open_source(tmp_path, check_images=False)  # no scan: found when loaded, with the same hint
    idx = src.files.index(bad)
    with pytest.raises(DataError, match=f"cannot read image {bad}: .*; set bad_images=skip"):
        src.load(idx)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        src = open_source(tmp_path, bad_images="skip")
    assert len(src) == 4


def test_empty_missing_and_malformed_datasets(tmp_path):
    with pytest.raises(DataError, match="dataset not found"):
        open_source(tmp_path / "nope.npz")
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match=f"{tmp_path / 'e.npz'}: dataset is empty"):
        open_source(tmp_path / "e.npz")
    np.savez(tmp_path / "k.npz", a=np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match=r"expected arrays 'x' and 'y', found \['a'\]"):
        open_source(tmp_path / "k.npz")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read the .npz file"):
        open_source(tmp_path / "junk.npz")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        open_source(tmp_path / "folder")
    (tmp_path / "folder" / "a").mkdir()
    with pytest.raises(DataError, match="dataset is empty"):
        open_source(tmp_path / "folder")


def test_label_outside_head_names_file_and_value(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 7, 1]))
    src = open_source(tmp_path / "d.npz")
    src.check_labels(8)
    with pytest.raises(
        DataError,
        match=rf"{tmp_path / 'd.npz'}: label 7 at index 1 is outside the model head \(num_classes=5\)",
    ):
        src.check_labels(5)


def test_hf_dataset_without_datasets_package_gives_clear_error(tmp_path, monkeypatch):
    (tmp_path / "dataset_info.json").write_text("{}")
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match=r"needs the 'datasets' package \(pip install datasets\)"):
        open_source(tmp_path)


def test_hf_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    import io

    import pyarrow as pa

    def png(i):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6), 30 * i, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    # Built from an arrow table with a fixed fingerprint: Dataset.from_dict's dill-based fingerprinting
    # fails with datasets 5.2 / dill 0.4.1 / pyarrow 26 ("Can't pickle MonthDayNano").
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = pa.table({"image": [{"bytes": png(i), "path": None} for i in range(4)], "label": [0, 1, 0, 1]})
    info = datasets.DatasetInfo(features=features)
    ds = datasets.Dataset(table.cast(features.arrow_schema), info=info, fingerprint="toy")
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    src = open_source(tmp_path / "hf")
    assert src.classes == ["a", "b"] and list(src.labels) == [0, 1, 0, 1]
    assert np.asarray(src.load(2)).max() == 60


def test_stratified_subset_and_holdout():
    y = np.repeat(np.arange(5), [50, 40, 30, 20, 2])
    idx = stratified_subset(y, 20, seed=0)
    assert len(idx) == 20
    counts = np.bincount(y[idx], minlength=5)
    assert counts[4] == 2 and counts.sum() == 20 and counts[:4].min() >= 4
    np.testing.assert_array_equal(idx, stratified_subset(y, 20, seed=0))
    train, hold = split_holdout(y, 0.1, seed=0)
    assert len(hold) == 14 and not set(train) & set(hold) and len(train) + len(hold) == len(y)


def test_epoch_sampler_truncates_shards_and_resumes():
    s = EpochSampler(50, samples_per_step=8, seed=3)
    assert s.steps_per_epoch == 6 and len(s) == 48
    first = list(s)
    assert sorted(first) == sorted(set(first)) and len(first) == 48
    s.set_position(0, start_step=2)
    assert list(s) == first[16:] and len(s) == 32
    s.set_position(1, 0)
    assert list(s) != first
    with pytest.raises(DataError, match="fewer than one optimizer step"):
        EpochSampler(5, samples_per_step=8, seed=0)


def test_seeded_augmentation_is_per_sample_and_epoch(tmp_path):
    np.savez(
        tmp_path / "d.npz",
        x=np.random.default_rng(0).integers(0, 255, (4, 20, 20)).astype(np.uint8),
        y=np.arange(4),
    )
    r = _recipe(img_size=16, augment="timm", hflip=0.5, crop_scale="[0.3,1.0]")
    ds = TransformedDataset(open_source(tmp_path / "d.npz"), Preprocess(r, train=True), seed=1)
    a = ds[2][0]
    torch.manual_seed(123)  # global RNG state must not matter, and must not be consumed
    state = torch.get_rng_state()
    torch.testing.assert_close(ds[2][0], a)
    assert torch.equal(torch.get_rng_state(), state)
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a)


def test_hf_labels_and_float_pixels_are_checked(tmp_path):
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa

    def save(name, features, columns):
        info = datasets.DatasetInfo(features=features)
        table = pa.table(columns).cast(features.arrow_schema)
        datasets.Dataset(table, info=info, fingerprint=name).save_to_disk(str(tmp_path / name))
        return tmp_path / name

    pixels = datasets.Array2D(shape=(2, 2), dtype="float32")
    # string labels: refused naming the directory, column, index and value (before any cast)
    path = save(
        "strings",
        datasets.Features({"pixel_values": pixels, "label": datasets.Value("string")}),
        {"pixel_values": [[[0.0, 1.0], [2.0, 3.0]]] * 2, "label": ["0", "cat"]},
    )
    with pytest.raises(DataError, match=rf"{path} column 'label': label '0' at index 0 is not a class index"):
        open_source(path)
    # float array pixels: whole 0-255 values are read exactly; 0-1 fractions are refused when loaded
    path = save(
        "floats",
        datasets.Features({"pixel_values": pixels, "label": datasets.Value("int64")}),
        {
            "pixel_values": [
                [[0.0, 17.0], [254.0, 255.0]],
                [[0.0, 0.5], [1.0, 1.0]],
                [[0.0, 1.0], [1.0, 0.0]],
            ],
            "label": [0, 1, 1],
        },
    )
    src = open_source(path)
    np.testing.assert_array_equal(src.load(0), np.array([[0, 17], [254, 255]], np.uint8))
    np.testing.assert_array_equal(src.load(2), np.array([[0, 1], [1, 0]], np.uint8))  # 0-255 values, as is
    with pytest.raises(DataError, match=rf"{path}: row 1 of column 'pixel_values' holds the pixel value 0.5"):
        src.load(1)
