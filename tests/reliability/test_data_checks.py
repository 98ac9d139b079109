"""Data that is never silently wrong, and bad images found up front (issue 19 item 7, issue 18 item 4).

Oracles are written here from the definitions: hand-placed NaN pixels and labels, uint8 images built by
hand next to their float versions, the documented epoch order (``torch.randperm`` seeded with
``seed * 100_003 + epoch``), and predictions of the good files alone for ``predict --skip-bad``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import make_recipe
from toy import toy_images

import adaptor_peft.train.data as data_mod
from adaptor_peft.cli import main as cli_main
from adaptor_peft.train.build import build_sources
from adaptor_peft.train.data import DataError, EpochSampler, Preprocess, open_source
from adaptor_peft.train.recipes import RecipeError, load_recipe
from adaptor_peft.train.trainer import train

REPO = Path(__file__).resolve().parents[2]


def _npz(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    np.savez(path, x=x, y=np.arange(len(x)) % 3 if y is None else y)
    return path


def _uint8_images(n: int = 6, shape: tuple = (5, 7)) -> np.ndarray:
    """Every value 0..255 appears (so a scale or rounding error shows), in a fixed pseudo-random order."""
    values = np.random.default_rng(4).permutation(np.arange(n * int(np.prod(shape))) % 256)
    return values.reshape(n, *shape).astype(np.uint8)


# --- NaN / Inf pixels -------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "text"), [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_nonfinite_pixel_names_file_image_and_position(tmp_path, bad, text):
    x = _uint8_images().astype(np.float32) / 255
    x[3, 2, 5] = bad
    path = _npz(tmp_path / "d.npz", x)
    with pytest.raises(DataError) as info:
        open_source(path)
    assert str(info.value) == (
        f"{path}: image 3 has a non-finite pixel ({text}) at (2, 5); repair the data or set "
        "nonfinite_pixels=<0-255 value> to replace such pixels"
    )


def test_nonfinite_pixels_replacement_is_exactly_that_value(tmp_path):
    u = _uint8_images()
    x = u.astype(np.float32) / 255  # a 0-1 set: the replacement is a 0-255 pixel value, not rescaled
    x[3, 2, 5], x[0, 0, 0], x[0, 4, 6] = np.nan, np.inf, -np.inf
    path = _npz(tmp_path / "d.npz", x)
    with pytest.warns(UserWarning, match=r"2 image\(s\) hold NaN/Inf pixels; they were set to 37"):
        src = open_source(path, nonfinite_pixels=37)
    expect = u.copy()
    expect[3, 2, 5] = expect[0, 0, 0] = expect[0, 4, 6] = 37
    for i in range(len(u)):
        np.testing.assert_array_equal(src.load(i), expect[i])
    # the recipe key reaches the training data
    recipe = make_recipe((path, None), tmp_path / "run", eval_data=None, nonfinite_pixels=37)
    with pytest.warns(UserWarning, match="set to 37"):
        train_src, _ = build_sources(recipe)
    assert train_src.load(3)[2, 5] == 37 and train_src.load(3)[2, 4] == u[3, 2, 4]
    # and without it, training is refused before the run directory exists
    out = tmp_path / "refused"
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: image 0 has a non-finite pixel \(inf\)"):
        train(make_recipe((path, None), out, eval_data=None))
    assert not out.exists()


@pytest.mark.parametrize("value", ["-1", "256", "1.5", "nan", "zero", "inf"])
def test_nonfinite_pixels_recipe_values(value):
    with pytest.raises(RecipeError, match=r"recipe key 'nonfinite_pixels' = .*: must be 'error' or a whole"):
        load_recipe(None, [f"nonfinite_pixels={value}"])
    assert load_recipe(None, ["nonfinite_pixels=0"]).nonfinite_pixels == 0
    assert load_recipe(None, ["nonfinite_pixels=255"]).nonfinite_pixels == 255
    assert load_recipe(None, []).nonfinite_pixels == "error"


# --- float ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["gray", "rgb_last", "rgb_first"])
def test_float_images_read_like_their_uint8_originals(tmp_path, dtype, layout):
    u = _uint8_images(6, (8, 9, 3) if layout != "gray" else (8, 9))
    stored = u.transpose(0, 3, 1, 2) if layout == "rgb_first" else u
    recipe = load_recipe(None, ["img_size=12", "mean=[0.3,0.4,0.5]", "std=[0.2,0.3,0.4]"])
    pre = Preprocess(recipe, train=False)
    ref = open_source(_npz(tmp_path / "u8.npz", stored))
    for scale in (1, 255):  # 0-1 and 0-255 floats
        x = (stored.astype(np.float64) / scale).astype(dtype)
        src = open_source(_npz(tmp_path / f"f{scale}.npz", x))
        for i in range(len(u)):
            np.testing.assert_array_equal(src.load(i), u[i])  # the hand-built uint8 image
            torch.testing.assert_close(pre(src.load(i)), pre(ref.load(i)), atol=0, rtol=0)


def test_float_pixels_round_to_the_nearest_value(tmp_path):
    x = np.array([[[0.0, 0.4, 0.6, 1.0], [127.49, 127.51, 254.5001, 255.0]]], dtype=np.float64)
    src = open_source(_npz(tmp_path / "d.npz", x, np.array([0])))
    np.testing.assert_array_equal(src.load(0), [[0, 0, 1, 1], [127, 128, 255, 255]])


def test_mixed_float_range_is_refused_naming_the_range(tmp_path):
    x = _uint8_images().astype(np.float32) / 255  # a 0-1 set ...
    x[4, 1, 1] = 1.5  # ... with one stray value: once read as 0-255 (a black training set)
    path = _npz(tmp_path / "d.npz", x)
    lo, hi = float(x.min()), 1.5
    with pytest.raises(DataError) as info:
        open_source(path)
    assert str(info.value) == (
        f"{path}: float pixels are not consistently in [0, 1] or [0, 255]: the images hold "
        f"[{lo:g}, {hi:g}]; 5 image(s) stay within [0, 1] (first: index 0) and 1 go above 1 "
        "(first: index 4); rescale them to one range"
    )


@pytest.mark.parametrize(
    ("values", "seen"),
    [([-0.5, 0.5], "[-0.5, 0.5]"), ([10.0, 300.0], "[0, 300]"), ([0.0, 1e30], "[0, 1e+30]")],
)
def test_float_pixels_outside_both_ranges_are_refused(tmp_path, values, seen):
    x = np.zeros((2, 3, 3), np.float32)
    x[0, 0, 0], x[1, 2, 2] = values
    path = _npz(tmp_path / "d.npz", x, np.array([0, 1]))
    expect = f"{path}: float pixels must be in [0, 1] or [0, 255]; the images hold {seen}; rescale them"
    with pytest.raises(DataError, match=re.escape(expect)):
        open_source(path)


@pytest.mark.parametrize(
    ("dtype", "value", "seen"), [(np.uint16, 1000, "[0, 1000]"), (np.int32, -3, "[-3, 0]")]
)
def test_integer_pixels_outside_0_255_are_refused(tmp_path, dtype, value, seen):
    x = np.zeros((2, 3, 3), dtype)
    x[1, 1, 1] = value
    path = _npz(tmp_path / "d.npz", x, np.array([0, 1]))
    expect = f"{path}: integer pixels must be in [0, 255]; the images hold {seen}"
    with pytest.raises(DataError, match=re.escape(expect)):
        open_source(path)
    x[1, 1, 1] = 200  # in range: kept exactly
    src = open_source(_npz(tmp_path / "ok.npz", x, np.array([0, 1])))
    assert src.load(1)[1, 1] == 200 and src.load(1).dtype == np.uint8


# --- labels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "index", "shown", "why"),
    [
        (np.array([0, 1, 1e30, 2]), 2, "1e+30", "larger than the largest class index allowed (999999)"),
        (np.array([0, 2.5, 1, 2]), 1, "2.5", "not a whole number"),
        (np.array([0, 1, 2, np.nan]), 3, "nan", "not a whole number"),
        (np.array([0, 1, -1, 2]), 2, "-1", "negative"),
        (np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64), 3, str(2**64 - 1), "larger than the largest"),
        (np.array([0, 1, 2, 1_000_000]), 3, "1000000", "larger than the largest"),
    ],
)
def test_bad_numeric_labels_are_refused_before_any_cast(tmp_path, labels, index, shown, why):
    path = _npz(tmp_path / "d.npz", np.zeros((4, 3, 3), np.uint8), labels)
    with pytest.raises(DataError) as info:
        open_source(path)
    assert str(info.value).startswith(f"{path}: label {shown} at index {index} is {why}"), info.value
    assert "labels must be integer class indices 0..C-1 (1 bad label(s))" in str(info.value)


@pytest.mark.parametrize(
    ("labels", "shown", "what"),
    [
        (np.array(["0", "a", "b"]), "'0'", "is not a class index (labels have dtype <U1)"),
        (np.array([True, False, True]), "True", "is a boolean, not a class index"),
        (np.array([1 + 0j, 2, 0]), "(1+0j)", "is not a class index (labels have dtype complex128)"),
    ],
)
def test_non_numeric_labels_name_the_file_index_and_value(tmp_path, labels, shown, what):
    path = _npz(tmp_path / "d.npz", np.zeros((3, 3, 3), np.uint8), labels)
    with pytest.raises(DataError, match=re.escape(f"{path}: label {shown} at index 0 {what}")):
        open_source(path)


def test_whole_float_labels_are_accepted(tmp_path):
    src = open_source(_npz(tmp_path / "d.npz", np.zeros((3, 3, 3), np.uint8), np.array([2.0, 0.0, 1.0])))
    assert src.labels.tolist() == [2, 0, 1] and src.classes == ["0", "1", "2"]


# --- the epoch order --------------------------------------------------------------------------------


def test_epoch_order_is_the_documented_permutation():
    """The order every earlier run used (so existing runs and resumes keep it): the list of
    torch.randperm(n) with a generator seeded seed * 100_003 + epoch, truncated to whole steps."""
    for n, per_step, seed in [(50, 8, 3), (1000, 7, 0), (65_537 * 2 + 5, 64, 12345)]:
        s = EpochSampler(n, samples_per_step=per_step, seed=seed)
        end = n // per_step * per_step
        for epoch, start_step in [(0, 0), (1, 0), (2, 3)]:
            s.set_position(epoch, start_step)
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            expect = torch.randperm(n, generator=g).tolist()[:end][start_step * per_step :]
            got = list(s)
            assert got == expect and len(s) == len(expect)
            assert all(type(i) is int for i in got[:5])


MEMORY_CHILD = r"""
import json, resource, sys
import numpy as np, torch
from adaptor_peft.train.data import EpochSampler

def vm_size():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

n = 10**7
sampler = EpochSampler(n, samples_per_step=8, seed=5)
sampler.set_position(2, 0)
list(EpochSampler(16, samples_per_step=8, seed=5))  # warm: first-call allocations are not the order
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cap = vm_size() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
order = np.fromiter(iter(sampler), dtype=np.int32, count=n)  # 40 MB of its own
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
g = torch.Generator().manual_seed(5 * 100_003 + 2)
head = torch.randperm(n, generator=g)[:1000].tolist()
same_head = order[:1000].tolist() == head
order.sort()
print("RESULT " + json.dumps(dict(growth=growth, permutation=bool(np.array_equal(order, np.arange(n))),
                                  same_head=same_head, length=len(sampler))))
"""


@pytest.mark.slow
def test_epoch_order_of_ten_million_samples_builds_no_python_list():
    """10^7 samples: the order as a Python list costs ~440 MB (an int object and a pointer per sample);
    as an int32 tensor iterated in chunks, 40 MB. The child's peak RSS may grow by 200 MB, the
    consumer's own 40 MB array included, under a 1 GiB address-space cap."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child failed (status {proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["permutation"] and result["same_head"] and result["length"] == 10**7, result
    assert result["growth"] < 200 * 1024**2, result


# --- unreadable images found before training ----------------------------------------------------------


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder_with_one_corrupt_png(tmp_path):
    """3 classes x 4 good 12x12 PNGs and one PNG cut in half."""
    root = tmp_path / "data"
    x, y = toy_images(12, num_classes=3, size=12, seed=2)
    for i, (img, label) in enumerate(zip(x, y)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        (root / f"c{label}" / f"{i:02d}.png").write_bytes(_png(img))
    bad = root / "c1" / "05b.png"
    good = _png(x[0])
    bad.write_bytes(good[: len(good) // 2])
    return root, bad


def test_train_cli_reports_a_corrupt_png_before_the_run_dir_exists(
    folder_with_one_corrupt_png, tmp_path, capsys
):
    root, bad = folder_with_one_corrupt_png
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(make_recipe((root, None), out, eval_data=None).to_dict()))
    assert cli_main(["train", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {root}: 1 unreadable image(s): {bad} (image file is truncated); "
        "set bad_images=skip to leave unreadable images out (or fix or remove them)\n"
    )
    assert not out.exists()  # nothing to clear with overwrite=true: the same command runs once fixed
    bad.unlink()
    assert cli_main(["train", str(recipe), "max_steps=1"]) == 0
    assert (out / "result.json").is_file()


def test_folder_scan_default_bound(folder_with_one_corrupt_png, monkeypatch):
    root, bad = folder_with_one_corrupt_png
    assert data_mod.CHECK_IMAGES_MAX_FILES == 20_000
    monkeypatch.setattr(data_mod, "CHECK_IMAGES_MAX_FILES", 13)  # the folder holds 13 files: scanned
    with pytest.raises(DataError, match="1 unreadable image"):
        open_source(root)
    monkeypatch.setattr(data_mod, "CHECK_IMAGES_MAX_FILES", 12)  # above the bound: not scanned ...
    src = open_source(root)
    assert bad in src.files
    with pytest.raises(DataError, match="1 unreadable image"):  # ... unless asked for
        open_source(root, check_images=True)
    monkeypatch.setattr(data_mod, "CHECK_IMAGES_MAX_FILES", 13)
    assert bad in open_source(root, check_images=False).files
    assert data_mod.CHECK_IMAGES_MAX_BYTES == 256 * 1024**2
    size = sum(p.stat().st_size for p in root.rglob("*.png"))
    monkeypatch.setattr(data_mod, "CHECK_IMAGES_MAX_BYTES", size)  # at the byte bound: scanned
    with pytest.raises(DataError, match="1 unreadable image"):
        open_source(root)
    monkeypatch.setattr(data_mod, "CHECK_IMAGES_MAX_BYTES", size - 1)  # above it: not scanned
    assert bad in open_source(root).files


# --- predict --skip-bad -------------------------------------------------------------------------------


def test_predict_skip_bad_reports_and_goes_on(reference_run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    x, _ = toy_images(3, num_classes=4, size=12, seed=8)
    for i, img in enumerate(x):
        (folder / f"{i}.png").write_bytes(_png(img))
    bad = folder / "1b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    run = str(reference_run)

    capsys.readouterr()
    good = [str(folder / f"{i}.png") for i in range(3)]
    assert cli_main(["predict", run, *good, "--json"]) == 0
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert cli_main(["predict", run, str(folder), "--json", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["file"] for r in rows] == [str(folder / n) for n in ("0.png", "1.png", "1b.png", "2.png")]
    assert rows[2] == {"file": str(bad), "error": "cannot read image: cannot identify image file"}
    assert [rows[0], rows[1], rows[3]] == alone  # the good files predicted exactly as on their own
    assert captured.err == (
        f"warning: skipped {bad}: cannot read image: cannot identify image file\n"
        "warning: 1 of 4 image(s) could not be read\n"
    )

    assert cli_main(["predict", run, str(folder), "--skip-bad"]) == 0  # the table: good rows only
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == [r["file"] for r in alone]
    assert f"warning: skipped {bad}" in captured.err

    # without the flag: the rows before the bad file are printed, then one error naming it and the flag
    assert cli_main(["predict", run, str(folder), "--json"]) == 1
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == alone[:2]
    assert captured.err == (
        f"error: cannot read image {bad}: cannot identify image file; pass --skip-bad to report "
        "unreadable images and go on\n"
    )
    # every file unreadable: reported, and the exit status says nothing was predicted
    assert cli_main(["predict", run, str(bad), "--skip-bad"]) == 1
    assert capsys.readouterr().out == ""
