"""Bad data, recipes and files at the training / loading entry points: each gets a specific exception whose
message names the offending file, key or value (and the CLI turns it into one ``error:`` line)."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from reliability_helpers import assert_clean_run_dir, make_recipe, recipe_dict
from toy import TINY_VMAMBA, toy_images

from adaptor_peft.cli import main as cli_main
from adaptor_peft.io import AdaptorFileCorruptError, AdaptorFileUnreadableError, load_adaptors
from adaptor_peft.models import create_model, load_checkpoint
from adaptor_peft.models.checkpoint import CheckpointError
from adaptor_peft.train.data import DataError, open_source
from adaptor_peft.train.recipes import RecipeError, load_recipe
from adaptor_peft.train.trainer import train

# --- unreadable / truncated images in an ImageFolder ----------------------------------------------


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


BAD_FILES = {
    # name -> bytes: each one fails in Image.open or Image.load
    "cat_a/garbage.png": b"\x89PNG but not really an image" * 3,
    "cat_b/truncated.png": None,  # first half of a real PNG
    "cat_c/truncated.jpg": None,  # first third of a real JPEG
    "cat_d/empty.jpeg": b"",
    "cat_a/notes.bmp": b"these are my notes, not a bitmap",
}


@pytest.fixture(scope="module")
def folder_with_bad_images(tmp_path_factory):
    """4 classes x 8 good 12x12 PNGs, plus the 5 broken files above."""
    root = tmp_path_factory.mktemp("folder")
    x, y = toy_images(32, num_classes=4, size=12, seed=3)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / f"cat_{'abcd'[label]}"
        d.mkdir(exist_ok=True)
        (d / f"img_{i:03d}.png").write_bytes(_png_bytes(img))
    png, jpg = _png_bytes(x[0]), _jpeg_bytes(x[1])
    for name, data in BAD_FILES.items():
        if name.endswith("truncated.png"):
            data = png[: len(png) // 2]
        elif name.endswith("truncated.jpg"):
            data = jpg[: len(jpg) // 3]
        (root / name).write_bytes(data)
    return root


def _bad_file_pattern(root) -> str:
    return (
        re.escape(str(root))
        + r"/cat_[a-d]/(garbage\.png|truncated\.png|truncated\.jpg|empty\.jpeg|notes\.bmp)"
    )


def test_bad_images_error_setting_names_the_file(folder_with_bad_images, tmp_path):
    root = folder_with_bad_images
    names = _bad_file_pattern(root)
    # scanned when opened (a small folder): all five listed at once, with the setting that skips them
    with pytest.raises(DataError) as info:
        open_source(root, bad_images="error")
    message = str(info.value)
    assert message.startswith(f"{root}: 5 unreadable image(s): ") and "\n" not in message
    assert len(re.findall(names, message)) == 5, message
    assert message.endswith("; set bad_images=skip to leave unreadable images out (or fix or remove them)")
    # without the scan each is found when it loads, and that error names the setting too
    src = open_source(root, bad_images="error", check_images=False)
    assert len(src) == 37
    for i, path in enumerate(src.files):
        if path.name in {p.split("/")[1] for p in BAD_FILES}:
            with pytest.raises(
                DataError, match=rf"cannot read image {re.escape(str(path))}: .*bad_images=skip"
            ):
                src.load(i)
    # training: refused before the run directory is created, so nothing needs overwrite=true after
    out = tmp_path / "run"
    with pytest.raises(DataError, match=rf"{re.escape(str(root))}: 5 unreadable image\(s\): {names} "):
        train(make_recipe((root, None), out, eval_data=None, batch_size=32, max_steps=2))
    assert not out.exists()
    # check_images=false: met mid-training (the old behaviour), the message names bad_images=skip
    with pytest.raises(DataError, match=r"cannot read image " + names + r": .*; set bad_images=skip"):
        train(make_recipe((root, None), out, eval_data=None, batch_size=32, max_steps=2, check_images=False))
    assert not (out / "result.json").exists()
    assert_clean_run_dir(out)


def test_bad_images_skip_setting_warns_with_count_and_trains(folder_with_bad_images, tmp_path):
    root = folder_with_bad_images
    with pytest.warns(UserWarning, match=rf"{re.escape(str(root))}: skipped 5 unreadable image\(s\)"):
        src = open_source(root, bad_images="skip")
    assert len(src) == 32 and src.classes == ["cat_a", "cat_b", "cat_c", "cat_d"]
    assert not any(p.name in {n.split("/")[1] for n in BAD_FILES} for p in src.files)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 5 unreadable image"):
        result = train(
            make_recipe((root, None), out, eval_data=None, bad_images="skip", batch_size=8, max_steps=2)
        )
    assert result.steps == 2
    assert_clean_run_dir(out)


def test_all_images_unreadable_is_an_empty_dataset(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))}: dataset is empty"):
            open_source(tmp_path, bad_images="skip")


def test_folder_without_class_subfolders(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))}: no class sub-folders found"):
        open_source(tmp_path)


# --- labels outside the head ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_label", "where", "why"),
    [
        (7, "train", r"is outside the model head \(num_classes=4\)"),
        (-1, "train", r"is negative; labels must be integer class indices 0\.\.C-1"),
        (4, "eval", r"is outside the model head \(num_classes=4\)"),
    ],
)
def test_label_outside_the_head(toy_data, tmp_path, bad_label, where, why):
    x, y = toy_images(24, num_classes=4, size=12, seed=5)
    y[13] = bad_label
    bad = tmp_path / f"{where}_bad.npz"
    np.savez(bad, x=x, y=y)
    data = (bad, toy_data[1]) if where == "train" else (toy_data[0], bad)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}: label {bad_label} at index 13 {why}"):
        train(make_recipe(data, out, num_classes=4))
    if bad_label < 0:  # never a class index: refused when the data is opened, before the run dir exists
        assert not out.exists()
    else:  # depends on the head size, known once the run is set up
        assert_clean_run_dir(out)


def test_image_folder_with_more_classes_than_the_head(folder_with_bad_images, tmp_path):
    with pytest.raises(
        DataError,
        match=r"label 2 at index \d+ is outside the model head \(num_classes=2\); 16 label\(s\) out of range",
    ):
        train(make_recipe((folder_with_bad_images, None), tmp_path / "r", eval_data=None, num_classes=2,
                          bad_images="skip"))  # fmt: skip


# --- recipes --------------------------------------------------------------------------------------


def test_unknown_key_in_recipe_file(toy_data, tmp_path):
    path = tmp_path / "typo.yaml"
    data = recipe_dict(toy_data, tmp_path / "run")
    data["max_stpes"] = data.pop("max_steps")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(
        f"unknown recipe key 'max_stpes' ({path}); did you mean 'max_steps'? valid keys: "
    )
    assert "valid keys: model, checkpoint, num_classes," in message and ", bad_images," in message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "max_step=3",
            r"unknown recipe key 'max_step' \(command line\); did you mean 'max_steps'\? valid keys: model,",
        ),
        ("adaptr.num_points=4", r"unknown recipe key 'adaptr' \(command line\); did you mean 'adaptor'\?"),
        ("lr=fast", r"recipe key 'lr' \(.*\) must be float, got 'fast'"),
        ("bad_images=ignore", r"recipe key 'bad_images' = 'ignore': must be one of \['error', 'skip'\]"),
        ("batch_size=0", r"recipe key 'batch_size' = 0: must be >= 1"),
    ],
)
def test_bad_override(toy_data, tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe_dict(toy_data, tmp_path / "run"), [override])


def test_unknown_adaptor_and_model_keys(toy_data, tmp_path):
    with pytest.raises(
        RecipeError, match=r"unknown adaptor key 'adaptor.num_point'; did you mean 'adaptor.num_points'"
    ):
        train(make_recipe(toy_data, tmp_path / "a", adaptor={"num_point": 4}))
    with pytest.raises(
        ValueError, match=r"unknown VSSM config key 'drop_path' \(did you mean 'drop_path_rate'\?\)"
    ):
        train(make_recipe(toy_data, tmp_path / "b", model_kwargs={"drop_path": 0.1}))


def test_cli_reports_one_line_errors(toy_data, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(toy_data, tmp_path / "run")))
    cases = [
        (
            ["train", str(path), "max_step=3"],
            r"error: unknown recipe key 'max_step' \(command line\); did you mean",
        ),
        (
            ["train", str(tmp_path / "missing.yaml")],
            rf"error: recipe file not found: {re.escape(str(tmp_path))}",
        ),
        (
            ["train", str(path), f"train_data={tmp_path}/none.npz"],
            rf"error: dataset not found: {tmp_path}/none\.npz",
        ),
        (
            ["info", str(tmp_path / "gone.safetensors")],
            rf"error: model file not found: {tmp_path}/gone\.safetensors",
        ),
    ]
    for argv, pattern in cases:
        capsys.readouterr()
        assert cli_main(argv) == 1, argv
        err = capsys.readouterr().err
        assert re.fullmatch(pattern + r".*\n", err), err
        assert err.count("\n") == 1 and "Traceback" not in err


# --- missing and damaged files --------------------------------------------------------------------


def test_missing_files_are_named(toy_data, tmp_path):
    gone = tmp_path / "gone"
    with pytest.raises(FileNotFoundError, match=rf"recipe file not found: {gone}\.yaml"):
        train(f"{gone}.yaml")
    with pytest.raises(DataError, match=rf"dataset not found: {gone}\.npz"):
        train(make_recipe(toy_data, tmp_path / "r1", train_data=f"{gone}.npz"))
    with pytest.raises(DataError, match=rf"dataset not found: {gone}_eval"):
        train(make_recipe(toy_data, tmp_path / "r2", eval_data=f"{gone}_eval"))
    with pytest.raises(
        FileNotFoundError, match=rf"checkpoint file not found: {gone}\.safetensors \(recipe key"
    ):
        train(make_recipe(toy_data, tmp_path / "r3", checkpoint=f"{gone}.safetensors"))
    with pytest.raises(FileNotFoundError, match=rf"checkpoint file not found: {gone}\.pth"):
        create_model(TINY_VMAMBA, checkpoint=f"{gone}.pth")
    with pytest.raises(FileNotFoundError, match=rf"checkpoint file not found: {gone}\.safetensors"):
        load_checkpoint(f"{gone}.safetensors")
    model = create_model(TINY_VMAMBA, num_classes=4)
    with pytest.raises(AdaptorFileUnreadableError, match=rf"{gone}\.safetensors.*file not found"):
        load_adaptors(model, f"{gone}.safetensors")
    # a failed start leaves nothing that blocks the corrected run
    for name in ("r1", "r2", "r3"):
        assert_clean_run_dir(tmp_path / name) if (tmp_path / name).exists() else None
    assert train(make_recipe(toy_data, tmp_path / "r1", max_steps=1, eval_data=None)).steps == 1


def test_damaged_checkpoint_and_adaptor_files(tmp_path):
    torch.manual_seed(0)
    bad = tmp_path / "base.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(bad))}: not a readable safetensors file"):
        create_model(TINY_VMAMBA, checkpoint=bad)
    pth = tmp_path / "base.pth"
    pth.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(pth))}: not a torch checkpoint or corrupt"):
        load_checkpoint(pth)
    from adaptor_peft import MambaAdaptorConfig, inject_adaptors, save_adaptors

    model = inject_adaptors(
        create_model(TINY_VMAMBA, num_classes=4), MambaAdaptorConfig(num_heads=2, num_points=2)
    )
    path = save_adaptors(model, tmp_path / "task.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AdaptorFileCorruptError, match=re.escape(str(path))):
        load_adaptors(create_model(TINY_VMAMBA, num_classes=4), path)


# --- eval / predict on a finished run -------------------------------------------------------------


def test_eval_and_predict_bad_inputs(reference_run, folder_with_bad_images, tmp_path, capsys):
    x, y = toy_images(8, num_classes=4, size=12, seed=9)
    y[5] = 9
    bad_labels = tmp_path / "bad_labels.npz"
    np.savez(bad_labels, x=x, y=y)
    truncated = folder_with_bad_images / "cat_b" / "truncated.png"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text((reference_run / "recipe.yaml").read_text())
    run, tmp = str(reference_run), re.escape(str(tmp_path))
    cases = [
        (["eval", run, "--data", str(bad_labels)],
         rf"{re.escape(str(bad_labels))}: label 9 at index 5 is outside the model head \(num_classes=4\)"),
        (["eval", run, "--data", str(tmp_path / "none")], rf"dataset not found: {tmp}/none"),
        (["eval", run, "--weights", str(tmp_path / "w.safetensors")],
         rf"trained weights not found: {tmp}/w\.safetensors"),
        (["eval", str(unfinished)], rf"{tmp}/unfinished: holds no finished run \(result\.json missing\)"),
        (["predict", run, str(truncated)], rf"cannot read image {re.escape(str(truncated))}: "),
        (["predict", run, str(tmp_path / "nope.png")], rf"image not found: {tmp}/nope\.png"),
        (["predict", run, str(unfinished)], rf"{tmp}/unfinished: no image files found"),
    ]  # fmt: skip
    for argv, pattern in cases:
        capsys.readouterr()
        assert cli_main(argv) == 1, argv
        err = capsys.readouterr().err
        assert re.fullmatch(r"error: " + pattern + r".*\n", err), (argv, err)
