"""The CLI without traps (issue 18): classes matched by name, no false warnings, recipe paths that must
exist, hints the CLI can follow, checkpoint and peft directories, free argument order, resume extension."""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from toy import TINY_VMAMBA, toy_images, write_toy_npz

from adaptor_peft.cli import main, parse_args

NAMES = ["circle", "square", "triangle"]  # sorted: the ImageFolder's class order


def _write_folder(root, n, seed, names=NAMES):
    """An ImageFolder of toy images: class i of toy_images goes to folder NAMES[i] (when in ``names``)."""
    x, y = toy_images(n, num_classes=3, size=12, seed=seed)
    for i, (img, label) in enumerate(zip(x, y)):
        if NAMES[label] in names:
            (root / NAMES[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / NAMES[label] / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A 3-class ImageFolder run on a base file whose head has 10 classes (training drops that head)."""
    from adaptor_peft.models import create_model
    from adaptor_peft.models.factory import HeadReplacedWarning
    from adaptor_peft.train.methods import get_method

    root = tmp_path_factory.mktemp("usability")
    torch.manual_seed(3)
    base = root / "base10.safetensors"
    get_method("full").save(create_model(dict(TINY_VMAMBA, num_classes=10)), base, {})
    train_dir = _write_folder(root / "train", 24, seed=0)
    eval_dir = _write_folder(root / "eval", 12, seed=1)
    recipe = root / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            dict(model=str(base), method="adaptor", adaptor={"num_heads": 2, "num_points": 2},
                 train_data=str(train_dir), eval_data=str(eval_dir), img_size=16, batch_size=8,
                 max_steps=4, lr=0.05, progress=False, plot=False, output_dir=str(root / "run"))
        )
    )  # fmt: skip
    with pytest.warns(HeadReplacedWarning, match="head has 10 classes and the model 3"):
        assert main(["train", str(recipe)]) == 0  # the warning is true here: training drops the head
    return root


def _eval_json(capsys, *argv):
    capsys.readouterr()
    assert main(["eval", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- 1. classes by name ------------------------------------------------------------------------------


def test_eval_maps_a_permuted_subset_of_the_classes_by_name(folder_run, tmp_path, capsys):
    """Folder {circle, triangle} (triangle at position 1, the model's 2) and an npz naming its classes
    [triangle, circle]: each class keeps the per-class accuracy and confusion row of the full folder."""
    run = folder_run / "run"
    full = _eval_json(capsys, run, "--data", folder_run / "eval")
    assert full["classes"] == NAMES and full["no_examples"] == []
    subset = _write_folder(tmp_path / "subset", 12, seed=1, names=["circle", "triangle"])
    x, y = toy_images(12, num_classes=3, size=12, seed=1)
    keep = y != 1
    permuted = tmp_path / "permuted.npz"  # positions: triangle 0, circle 1
    np.savez(permuted, x=x[keep], y=np.where(y[keep] == 2, 0, 1), classes=np.array(["triangle", "circle"]))
    for data in (subset, permuted):
        got = _eval_json(capsys, run, "--data", data)
        assert got["count"] == int(keep.sum())
        assert got["per_class"][0] == pytest.approx(full["per_class"][0])
        assert got["per_class"][2] == pytest.approx(full["per_class"][2])
        assert got["per_class"][1] is None and got["no_examples"] == ["square"]
        assert got["confusion"][0] == full["confusion"][0] and got["confusion"][2] == full["confusion"][2]
        assert got["confusion"][1] == [0, 0, 0]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(subset)]) == 0
    assert "no examples of 1 class(es): square" in capsys.readouterr().out


def test_eval_refuses_class_names_the_model_does_not_know(folder_run, tmp_path, capsys):
    from adaptor_peft.train.data import DataError
    from adaptor_peft.train.inference import evaluate_dataset, load_trained

    data = _write_folder(tmp_path / "d", 9, seed=2, names=["circle"])
    shutil.copytree(data / "circle", data / "hexagon")
    (data / "pentagon").mkdir()  # empty: scores nothing, so it is not refused
    with pytest.raises(DataError, match=r"1 class\(es\) the model does not know: 'hexagon'; the model's"):
        evaluate_dataset(load_trained(folder_run / "run"), data)
    capsys.readouterr()
    assert main(["eval", str(folder_run / "run"), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'hexagon'" in err and "'circle', 'square', 'triangle'" in err


# --- 2. no warning for a head that is then restored -----------------------------------------------------


def test_eval_and_predict_of_a_trained_file_warn_about_nothing(folder_run, capsys, caplog):
    run = folder_run / "run"
    image = next((folder_run / "eval" / "square").iterdir())
    calls = [
        ["eval", str(run)],
        ["eval", str(run / "adaptor.safetensors")],
        ["eval", str(run / "checkpoints")],
        ["predict", str(run), str(image)],
        ["predict", str(run / "adaptor.safetensors"), str(image)],
    ]
    caplog.set_level(logging.WARNING)
    for argv in calls:
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert main(argv) == 0, argv
        assert [str(w.message) for w in seen] == [], argv
        assert "warning" not in capsys.readouterr().err.lower(), argv
    assert [r.getMessage() for r in caplog.records] == []


# --- 3. recipe paths -----------------------------------------------------------------------------------


def test_a_recipe_path_must_exist_and_bundled_recipes_go_by_bare_name(tmp_path, monkeypatch, capsys):
    from adaptor_peft.train.recipes import ASSETS_DIR, RECIPES_DIR, resolve_recipe_path

    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the old lookup fell back to the bundled one
    for arg in ("recipes/transfer.yaml", "transfer.yaml"):
        capsys.readouterr()
        assert main(["train", arg]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"error: recipe file not found: {arg} (the bundled recipe of that name is reached by its bare "
            "name: 'transfer')\n"
        )
    (tmp_path / "recipes").mkdir()
    assert main(["train", "recipes"]) == 1  # a directory is not a recipe
    assert "no bundled recipe named 'recipes'" in capsys.readouterr().err
    assert resolve_recipe_path("transfer") == RECIPES_DIR / "transfer.yaml"
    assert resolve_recipe_path("quickstart").resolve() == (ASSETS_DIR / "quickstart.yaml").resolve()
    with pytest.raises(FileNotFoundError, match="no bundled recipe named 'transfr'; did you mean 'transfer'"):
        resolve_recipe_path("transfr")


# --- 5. hints the CLI can follow, checkpoint and peft directories ------------------------------------


def test_base_mismatch_hint_is_a_cli_flag_and_the_flag_works(folder_run, tmp_path, capsys):
    from safetensors.torch import save_file

    from adaptor_peft.models import create_model
    from adaptor_peft.train.methods import get_method

    run = folder_run / "run"
    adaptor = run / "adaptor.safetensors"
    from_run = _eval_json(capsys, run)
    torch.manual_seed(99)
    other = tmp_path / "other.safetensors"
    get_method("full").save(create_model(dict(TINY_VMAMBA, num_classes=10)), other, {})
    assert main(["eval", str(adaptor), "--base", str(other)]) == 1
    err = capsys.readouterr().err
    assert (
        "fingerprint" in err and "pass --allow-base-mismatch" in err and "allow_base_mismatch=True" not in err
    )
    with pytest.warns(UserWarning, match="loading anyway"):
        mismatched = _eval_json(capsys, adaptor, "--base", other, "--allow-base-mismatch")
    assert mismatched["count"] == from_run["count"]
    # a base holding weights only (no 'config' metadata): the adaptor file records the architecture
    weights_only = tmp_path / "weights_only.safetensors"
    save_file(create_model(folder_run / "base10.safetensors").state_dict(), str(weights_only))
    assert _eval_json(capsys, adaptor, "--base", weights_only) == from_run


def test_eval_predict_and_info_take_a_training_checkpoint_directory(folder_run, capsys):
    run = folder_run / "run"
    from_run = _eval_json(capsys, run)
    (step_dir,) = sorted((run / "checkpoints").glob("step_*"))[-1:]
    assert _eval_json(capsys, step_dir) == from_run  # the final checkpoint holds the trained tensors
    assert _eval_json(capsys, run / "checkpoints") == from_run
    assert _eval_json(capsys, run, "--weights", step_dir) == from_run
    image = str(next((folder_run / "eval" / "triangle").iterdir()))
    assert main(["predict", str(run), image, "--json"]) == 0
    expected = capsys.readouterr().out
    assert main(["predict", str(step_dir), image, "--json"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["info", str(step_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"training checkpoint: {step_dir}") and "step: 4 " in out
    assert "classes (3): circle, square, triangle" in out and "every file present at its size" in out
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"training run: {run}") and "  steps: 4" in out


def test_eval_of_a_peft_save_pretrained_directory(folder_run, tmp_path, capsys):
    """A peft directory on the base file: the CLI's metrics equal a hand evaluation of the in-memory model."""
    import adaptor_peft as ap
    from adaptor_peft.models import create_model

    base = folder_run / "base10.safetensors"
    torch.manual_seed(5)
    model = ap.get_peft_model(create_model(base), ap.MambaAdaptorConfig(num_heads=2, num_points=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape) * 0.1)
    model.eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    data = write_toy_npz(tmp_path / "d.npz", 12, num_classes=4, size=12, seed=4)
    got = _eval_json(capsys, tmp_path / "adapter", "--base", base, "--data", data)
    with np.load(data) as f:  # the recipe defaults: 32 x 32, gray centred on black, mean = std = 0.5
        x, y = f["x"].astype(np.float32) / 255.0, f["y"]
    canvas = np.zeros((len(x), 3, 32, 32), dtype=np.float32)
    canvas[:, :, 10:22, 10:22] = x[:, None]
    with torch.no_grad():
        preds = model(torch.from_numpy((canvas - 0.5) / 0.5)).argmax(1).numpy()
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (y, preds), 1)
    assert got["confusion"] == confusion.tolist()
    assert got["top1"] == pytest.approx(100.0 * float(np.mean(preds == y)))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "adapter"), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "names no base model file" in err and "pass the base weights with --base FILE" in err


# --- 6. argument traps ------------------------------------------------------------------------------------


def test_options_and_overrides_in_any_order_and_a_global_debug():
    for argv in (
        ["train", "r.yaml", "--resume", "max_steps=30", "lr=1"],
        ["train", "--resume", "r.yaml", "max_steps=30", "lr=1"],
        ["train", "r.yaml", "max_steps=30", "--resume", "lr=1"],
    ):
        args = parse_args(argv)
        assert (args.recipe, args.overrides, args.resume, args.debug) == (
            "r.yaml",
            ["max_steps=30", "lr=1"],
            True,
            False,
        )
    args = parse_args(["predict", "run", "a.png", "--topk", "2", "b.png", "--allow-base-mismatch"])
    assert (args.images, args.topk, args.allow_base_mismatch) == (["a.png", "b.png"], 2, True)
    assert parse_args(["--debug", "eval", "run"]).debug is True
    with pytest.raises(FileNotFoundError, match="recipe file not found: nope.yaml"):
        main(["--debug", "train", "nope.yaml"])  # the global flag shows the traceback (raises)


def test_resume_extends_a_finished_run_and_replans_the_schedule(tmp_path, capsys):
    """`train RUN/recipe.yaml --resume max_steps=4` on a run finished at step 2: steps 3 and 4 apply the
    4-step cosine (hand-worked: lr x (1 + cos(pi (k-1)/4)) / 2 = lr / 2 and lr (1 - 1/sqrt 2) / 2)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    data = str(write_toy_npz(tmp_path / "d.npz", 16, num_classes=4, size=12, seed=0))
    out = tmp_path / "run"
    recipe = dict(model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2},
                  train_data=data, img_size=16, batch_size=8, max_steps=2, lr=0.04, log_every=1,
                  progress=False, plot=False, output_dir=str(out))  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml")]) == 0
    assert f"recipe: {tmp_path / 'r.yaml'}" in capsys.readouterr().out
    before = (out / "adaptor.safetensors").read_bytes()
    saved = out / "recipe.yaml"
    assert main(["train", str(saved), "--resume", "max_steps=2"]) == 1  # not larger: refused, untouched
    assert "extends it only to a max_steps larger than its 2 steps" in capsys.readouterr().err
    assert main(["train", str(saved), "--resume", "max_steps=4", "lr=0.5"]) == 1  # other keys still locked
    assert "resume recipe differs from the run's in lr" in capsys.readouterr().err
    applied = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: applied.append(opt.param_groups[0]["lr"]))
    try:
        assert main(["train", str(saved), "--resume", "max_steps=4"]) == 0
    finally:
        handle.remove()
    assert "extending the finished run from 2 to 4 steps" in capsys.readouterr().out
    assert applied == pytest.approx([0.02, 0.04 * (1 - 1 / math.sqrt(2)) / 2], rel=1e-12)
    assert json.loads((out / "result.json").read_text())["steps"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (out / "adaptor.safetensors").read_bytes() != before


# --- hostile run folders and terminal escapes (issue 19) ---------------------------------------------


def test_eval_refuses_an_oversized_result_json_without_reading_it(folder_run, tmp_path, capsys):
    """A run's result.json swapped for a sparse 100 MB file is refused by size, naming it (no read)."""
    run = tmp_path / "run"
    shutil.copytree(folder_run / "run", run)
    result = run / "result.json"
    result.unlink()
    with open(result, "wb") as f:
        f.truncate(100 << 20)  # sparse: costs no disk, but json.loads(read_text()) would read it all
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert str(result) in err and "104,857,600 bytes" in err and "67,108,864" in err


def test_cli_errors_escape_terminal_control_characters(capsys):
    """A name from the command line or a file reaches the terminal with ESC/BEL/bidi shown, not obeyed."""
    hostile = "run_\x1b[2J\x07\u202eevil"  # eval's "not found" message quotes the path as given
    assert main(["eval", hostile]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "\\x1b[2J\\x07\\u202eevil" in err
