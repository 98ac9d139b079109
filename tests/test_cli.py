"""The adaptor-peft command: every subcommand on tiny data, --help, one-line errors, the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from toy import TINY_VMAMBA, toy_images, write_toy_npz

from adaptor_peft.cli import main

SUBCOMMANDS = ["train", "eval", "predict", "quickstart", "info", "convert"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: avoid OpenMP spin-waiting on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train = write_toy_npz(root / "train.npz", 32, num_classes=4, size=12, seed=0)
    evald = write_toy_npz(root / "eval.npz", 16, num_classes=4, size=12, seed=1)
    recipe = root / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            dict(model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2},
                 train_data=str(train), eval_data=str(evald), img_size=16, batch_size=8, max_steps=2,
                 log_every=1, progress=False, output_dir=str(root / "run"))
        )
    )  # fmt: skip
    assert main(["train", str(recipe), "lr=0.02"]) == 0
    return root, recipe


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: adaptor-peft {command}") and "--debug" in out


def test_train(trained_run, capsys):
    root, _ = trained_run
    run = root / "run"
    assert json.loads((run / "result.json").read_text())["steps"] == 2
    assert load_lr(run) == 0.02
    assert (run / "adaptor.safetensors").is_file() and (run / "curves.png").is_file()


def load_lr(run):
    return yaml.safe_load((run / "recipe.yaml").read_text())["lr"]


def test_train_refuses_finished_run_with_one_line_error(trained_run, capsys):
    _, recipe = trained_run
    assert main(["train", str(recipe)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "already holds a finished run" in err and "\n" not in err


def _eval_by_hand(run, npz_path, size=16):
    """Metrics of the trained model on an .npz of gray images, computed here: the images padded (black,
    centred) to size x size and normalised by hand, accuracy / confusion / loss with numpy."""
    from adaptor_peft.train.inference import load_trained

    data = np.load(npz_path)
    x, y = data["x"].astype(np.float32) / 255.0, data["y"]
    top = (size - x.shape[1]) // 2
    left = (size - x.shape[2]) // 2
    canvas = np.zeros((len(x), 3, size, size), dtype=np.float32)
    canvas[:, :, top : top + x.shape[1], left : left + x.shape[2]] = x[:, None]
    with torch.no_grad():
        logits = load_trained(run).model(torch.from_numpy((canvas - 0.5) / 0.5)).double().numpy()
    num_classes = logits.shape[1]
    preds = logits.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, preds), 1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {
        "count": len(y),
        "top1": 100.0 * float(np.mean(preds == y)),
        "loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "confusion": confusion.tolist(),
        "per_class": [100.0 * confusion[c, c] / confusion[c].sum() for c in range(num_classes)],
    }


def test_eval(trained_run, capsys):
    root, _ = trained_run
    assert main(["eval", str(root / "run"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = _eval_by_hand(root / "run", root / "eval.npz")
    assert metrics["count"] == expected["count"] == 16
    assert metrics["confusion"] == expected["confusion"]
    assert metrics["top1"] == pytest.approx(expected["top1"])
    assert metrics["per_class"] == pytest.approx(expected["per_class"])
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert "top5" not in metrics  # 4 classes: top-5 would be every image (see test_metrics_oracle)
    final = json.loads((root / "run" / "final_eval.json").read_text())  # the trainer's own model
    assert final["confusion"] == expected["confusion"] and final["top1"] == pytest.approx(expected["top1"])
    assert main(["eval", str(root / "run"), "--data", str(root / "train.npz")]) == 0
    out = capsys.readouterr().out
    assert "(32 images)" in out and out.startswith("top-1 ") and "top-5" not in out


def test_predict(trained_run, tmp_path, capsys):
    root, _ = trained_run
    x, _ = toy_images(3, num_classes=4, size=12, seed=5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img).save(folder / f"{i}.png")
    assert main(["predict", str(root / "run"), str(folder), "--topk", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    for r in rows:
        assert len(r["top"]) == 2 and r["top"][0][1] >= r["top"][1][1]
        assert {c for c, _ in r["top"]} <= {"0", "1", "2", "3"}
    assert main(["predict", str(root / "run"), str(folder / "missing.png")]) == 1
    assert "error: image not found:" in capsys.readouterr().err


def test_quickstart_on_tiny_base(tmp_path, capsys):
    from adaptor_peft.models import create_model
    from adaptor_peft.train.methods import get_method

    base = tmp_path / "tiny_base.safetensors"
    get_method("full").save(create_model(dict(TINY_VMAMBA, num_classes=10)), base, {})
    out = tmp_path / "qs"
    small_eval = write_toy_npz(tmp_path / "eval.npz", 16, num_classes=4, size=28, seed=2)
    args = ["quickstart", "--output", str(out), f"model={base}", "max_steps=2", "batch_size=16",
            "train_limit=64", f"eval_data={small_eval}", "eval_every=null", "save_every=null",
            "--compare-linear-probe"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    before = "accuracy before (frozen base + fresh linear head, 0 steps):"
    needles = [before, "accuracy after  (2 steps", "trainable:", "linear probe, same budget:",
               f"adaptor file: {out / 'adaptor.safetensors'}", f"plot: {out / 'curves.png'}"]  # fmt: skip
    for needle in needles:
        assert needle in text
    assert (out / "linear_probe" / "head.safetensors").is_file()


def test_info_model_and_file(trained_run, capsys):
    root, _ = trained_run
    assert main(["info", "test_vmamba"]) == 0
    assert "test_vmamba: VMamba" in capsys.readouterr().out
    assert main(["info", str(root / "run" / "adaptor.safetensors")]) == 0
    assert "adaptor.safetensors" in capsys.readouterr().out
    assert main(["info", "no_such_model"]) == 1
    assert capsys.readouterr().err.startswith("error: unknown model 'no_such_model'")


def test_info_flops_matches_counter(capsys):
    from adaptor_peft.flops import count_flops
    from adaptor_peft.models import create_model

    assert main(["info", "test_vmamba", "--flops", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    with torch.device("meta"):
        model = create_model("test_vmamba")
    report = count_flops(model, img_size=64)
    assert f"FLOPs {report.flops:,} " in out, out
    assert f"params {report.params:,} " in out, out


def test_convert(tmp_path, capsys):
    from safetensors.torch import load_file

    from adaptor_peft.models import create_model

    sd = create_model("test_vmamba").state_dict()
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    assert main(["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "out.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 1
    assert capsys.readouterr().err.strip() == f"error: checkpoint file not found: {tmp_path / 'missing.pth'}"


def test_debug_shows_traceback():
    with pytest.raises(FileNotFoundError, match="recipe file not found: nope.yaml"):
        main(["train", "nope.yaml", "--debug"])


def test_console_script_exit_code_and_one_line_error(tmp_path):
    script = Path(sys.executable).parent / "adaptor-peft"
    assert script.is_file(), "console script not installed (pip install -e .)"
    cmd = [str(script), "train", str(tmp_path / "nope.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: recipe file not found: {tmp_path / 'nope.yaml'}"]
    assert "Traceback" not in proc.stderr


def test_shipped_checkpoint_builds():
    from adaptor_peft.models import create_model
    from adaptor_peft.train.recipes import ASSETS_DIR

    model = create_model(ASSETS_DIR / "vmamba_fmnist_d32.safetensors")
    assert model.dims == [32, 64, 128, 256] and model.num_classes == 10
    assert np.isclose(sum(p.numel() for p in model.parameters()), 1_684_106)
    assert (ASSETS_DIR / "FASHION_MNIST_LICENSE.txt").is_file() and (
        ASSETS_DIR / "MNIST_LICENSE.txt"
    ).is_file()


def test_eval_and_predict_from_the_adaptor_file_alone(trained_run, tmp_path, capsys):
    """The adaptor file carries its recipe: eval/predict need no run directory; --base swaps in base
    weights (checked against the file's base fingerprint: the wrong base is a one-line error)."""
    from safetensors.torch import save_file

    from adaptor_peft.train.build import build_model
    from adaptor_peft.train.recipes import load_recipe

    root, _ = trained_run
    adaptor = tmp_path / "moved" / "adaptor.safetensors"  # away from its run directory
    adaptor.parent.mkdir()
    adaptor.write_bytes((root / "run" / "adaptor.safetensors").read_bytes())
    assert main(["eval", str(root / "run"), "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(adaptor), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_run

    recipe = load_recipe(root / "run" / "recipe.yaml")
    for seed, name in ((recipe.seed, "base.safetensors"), (recipe.seed + 1, "other.safetensors")):
        torch.manual_seed(seed)
        save_file(build_model(recipe, 4).state_dict(), str(tmp_path / name))
    assert main(["eval", str(adaptor), "--base", str(tmp_path / "base.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_run
    x, _ = toy_images(2, num_classes=4, size=12, seed=5)
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    images = [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert main(["predict", str(root / "run"), *images, "--json"]) == 0
    expected = capsys.readouterr().out
    assert (
        main(["predict", str(adaptor), *images, "--base", str(tmp_path / "base.safetensors"), "--json"]) == 0
    )
    assert capsys.readouterr().out == expected

    assert main(["eval", str(adaptor), "--base", str(tmp_path / "other.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "fingerprint" in err and str(adaptor) in err
    assert main(["eval", str(adaptor), "--base", str(tmp_path / "missing.pth")]) == 1
    assert "base checkpoint not found" in capsys.readouterr().err
    assert main(["eval", str(root / "run"), "--base", str(tmp_path / "base.safetensors")]) == 1
    assert "goes with a trained .safetensors file" in capsys.readouterr().err
    with_file_base = tmp_path / "file_base.safetensors"  # a recipe naming a base file that is gone
    _rewrite_user_recipe(adaptor, with_file_base, model=str(tmp_path / "gone.safetensors"))
    assert main(["eval", str(with_file_base)]) == 1
    err = capsys.readouterr().err
    assert "gone.safetensors" in err and "pass its location with --base" in err
    plain = tmp_path / "plain.safetensors"  # an adaptor file saved from Python: no recipe inside
    from adaptor_peft import create_model, inject_adaptors, save_adaptors
    from adaptor_peft.adaptors import MambaAdaptorConfig

    save_adaptors(inject_adaptors(create_model("test_vmamba"), MambaAdaptorConfig()), plain)
    assert main(["eval", str(plain)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {plain} [recipe]: holds no training recipe") and "load_adaptors" in err


def _rewrite_user_recipe(src, dst, **changes):
    """Re-save an adaptor file with recipe keys changed (save_adaptors signs it: it stays valid)."""
    from adaptor_peft import save_adaptors
    from adaptor_peft.io import parse_adaptor_header, read_safetensors
    from adaptor_peft.train.build import build_model
    from adaptor_peft.train.methods import get_method
    from adaptor_peft.train.recipes import load_recipe

    meta = dict(parse_adaptor_header(read_safetensors(src, header_only=True)).user_metadata)
    recipe = load_recipe(dict(meta["recipe"]))
    method = get_method(recipe.method)
    torch.manual_seed(recipe.seed)
    model = method.load(method.prepare(build_model(recipe, len(meta["classes"])), recipe), src)
    save_adaptors(model, dst, metadata=dict(meta, recipe=dict(meta["recipe"], **changes)))


def test_eval_from_the_trained_file_of_other_methods(tmp_path, capsys):
    """linear_probe / lora files carry their recipe too: eval on the file equals eval on the run."""
    data = str(write_toy_npz(tmp_path / "d.npz", 16, num_classes=4, size=12, seed=0))
    for method in ("linear_probe", "lora"):
        out = tmp_path / method
        recipe = dict(model=TINY_VMAMBA, method=method, train_data=data, eval_data=data, img_size=16,
                      batch_size=8, max_steps=2, progress=False, plot=False, output_dir=str(out))  # fmt: skip
        (tmp_path / f"{method}.yaml").write_text(yaml.safe_dump(recipe))
        assert main(["train", str(tmp_path / f"{method}.yaml")]) == 0
        capsys.readouterr()
        (trained,) = [p for p in out.glob("*.safetensors")]
        assert main(["eval", str(out), "--json"]) == 0
        from_run = json.loads(capsys.readouterr().out)
        assert main(["eval", str(trained), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == from_run, method
