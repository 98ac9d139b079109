"""Protocol v2 of benchmarks/transfer.py: its splits, the diagnostic canvases, lr choice and recipes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def transfer():
    """benchmarks/transfer.py as a module (a script folder, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("transfer")
    finally:
        sys.path.remove(str(BENCH))


def _rows(x: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in x}


def test_pairs_put_two_digits_in_opposite_corners_with_the_parity_label(transfer):
    # image i is the constant i (0..199), label i % 10: each corner tells which image it holds
    x = np.repeat(np.arange(200, dtype=np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    y = np.arange(200) % 10
    for local in (False, True):
        canvas, label = transfer._pairs(x, y, 300, seed=5, local=local)
        assert canvas.shape == (300, 64, 64)
        a, b = canvas[:, 0, 0].astype(int), canvas[:, 63, 63].astype(int)
        assert (canvas[:, :28, :28] == a[:, None, None]).all()
        assert (canvas[:, 36:, 36:] == b[:, None, None]).all()
        assert (canvas[:, 28:36, :] == 0).all() and (canvas[:, :, 28:36] == 0).all()
        expected = (a % 10) % 2 if local else ((a % 10) + (b % 10)) % 2
        assert (label == expected).all()
    assert 0.35 < label.mean() < 0.65


def test_pairs128_put_0_1_digits_in_far_corners_with_the_xor_label(transfer):
    # image i is the constant 10 + i, label i % 10: a constant image stays constant when resized
    x = (10 + np.arange(200, dtype=np.uint8))[:, None, None].repeat(28, 1).repeat(28, 2)
    y = np.arange(200) % 10
    for local in (False, True):
        canvas, label = transfer._pairs128(x, y, 400, seed=3, local=local)
        assert canvas.shape == (400, 128, 128) and canvas.dtype == np.uint8
        a, b = canvas[:, 4, 4].astype(int) - 10, canvas[:, 123, 123].astype(int) - 10
        assert set(a % 10) == {0, 1} and set(b % 10) == {0, 1}  # only digits 0 and 1
        assert (canvas[:, 4:60, 4:60] == canvas[:, 4:5, 4:5]).all()
        assert (canvas[:, 68:124, 68:124] == canvas[:, 123:124, 123:124]).all()
        inside = np.zeros((128, 128), bool)
        inside[4:60, 4:60] = inside[68:124, 68:124] = True
        assert (canvas[:, ~inside] == 0).all()
        expected = a % 10 if local else (a % 10) != (b % 10)
        assert (label == expected).all()
        assert 0.4 < label.mean() < 0.6


def test_fixed_lr_skips_the_grid_and_targets_of_two_bases_are_refused(transfer, tmp_path, capsys):
    common = ["--v2", "--dry-run", "--work-dir", str(tmp_path), "--seeds", "0", "1"]
    fixed = ["--methods", "full", "lora_r8", "--fixed-lr", "full=3e-3"]
    transfer.main([*common, "--targets", "pairs128", "pairs128_few", *fixed])
    out = capsys.readouterr().out
    # full has no grid (fixed); lora_r8's grid on pairs128's own split is 2 lrs; 2 labels x 2 seeds finals
    assert "pairs128: images {'train': 2000, 'test': 1000, 'sel_train': 1600, 'sel_val': 400}" in out
    assert "2 selection runs to do, then 4 final runs" in out
    assert "pairs128_few: images {'train': 256, 'test': 1000, 'sel_train': 205, 'sel_val': 51}" in out
    with pytest.raises(SystemExit):
        transfer.main([*common, "--targets", "mnist", "mnist128"])
    assert "need different bases" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        transfer.main([*common, "--targets", "mnist128", "--fixed-lr", "full=fast"])
    assert "--fixed-lr takes LABEL=LR" in capsys.readouterr().err


def test_mnist_splits_are_fixed_disjoint_and_stratified(transfer, tmp_path):
    paths = transfer.prepare_v2_data(
        tmp_path, transfer.ASSETS / "mnist_train.npz", transfer.ASSETS / "mnist_test.npz", "mnist"
    )
    d = {k: np.load(v) for k, v in paths.items()}
    assert np.bincount(d["train"]["y"]).tolist() == [100] * 10  # the 1k split
    assert np.bincount(d["sel_val"]["y"]).tolist() == [20] * 10  # 800 / 200
    train, sel_tr, sel_val = (_rows(d[k]["x"]) for k in ("train", "sel_train", "sel_val"))
    assert len(sel_tr) + len(sel_val) == 1000 and sel_tr | sel_val == train and not sel_tr & sel_val
    shipped_test = np.load(transfer.ASSETS / "mnist_test.npz")
    assert np.array_equal(d["test"]["x"], shipped_test["x"])
    assert not train & _rows(shipped_test["x"])


def test_best_lr_is_the_highest_final_validation_top1_ties_to_the_smaller(transfer):
    rows = [{"lr": 0.1, "top1": 80.0}, {"lr": 0.01, "top1": 82.5}, {"lr": 0.03, "top1": 82.5}]
    assert transfer.best_lr(rows) == 0.01
    assert transfer.best_lr([{"lr": 0.1, "top1": 90.0}, {"lr": 0.01, "top1": 82.5}]) == 0.1
    assert transfer.best_lr([]) is None


def test_selection_never_sees_the_test_split_and_the_final_run_evaluates_it_once(transfer):
    data = {k: f"/d/{k}.npz" for k in ("train", "test", "sel_train", "sel_val")}
    base = {"label": "hybrid", "target": "mnist", "lr": 0.01, "seed": 0, "epochs": 12, "batch_size": 32,
            "checkpoint": "ck.safetensors", "data": data, "run_dir": "/r", "steps_per_epoch": 25}  # fmt: skip
    sel = transfer.v2_recipe({**base, "stage": "select"})
    assert (sel["train_data"], sel["eval_data"], sel["eval_every"]) == (
        data["sel_train"],
        data["sel_val"],
        25,
    )
    fin = transfer.v2_recipe({**base, "stage": "final"})
    assert (fin["train_data"], fin["eval_data"]) == (data["train"], data["test"])
    assert fin["eval_every"] == 0  # evaluated at the end only (the trainer's default is ~10 times)
    assert fin["adaptor"]["train_norms"] is True and fin["method_options"] == {"r": 4, "alpha": 8}
    assert fin["epochs"] == 12 and "max_steps" not in fin
