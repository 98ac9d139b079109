"""The VTAB-1k harness of benchmarks/transfer.py (--v2 --vtab-root --dry-run) on synthetic task folders."""

from __future__ import annotations

import collections
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor_peft.train.data import DataError, open_source

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The benchmarks' transfer and vtab modules (a script folder, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("transfer"), importlib.import_module("vtab")
    finally:
        sys.path.remove(str(BENCH))


def _write_task(root: Path, task: str, num_classes: int, sizes: dict[str, int], seed: int) -> dict:
    """A task folder: 3 tiny images and list files of the given sizes; returns {list file: labels}."""
    rng = np.random.default_rng(seed)
    d = root / task / "images"
    d.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(d / f"im{i}.png")
    written = {}
    for name, n in sizes.items():
        labels = rng.integers(0, num_classes, n)
        lines = [f"images/im{i % 3}.png {y}" for i, y in enumerate(labels)]
        (root / task / name).write_text("\n".join(lines) + "\n")
        written[name] = labels.tolist()
    return written


SIZES = {"train800.txt": 800, "val200.txt": 200, "train800val200.txt": 1000, "test.txt": 37}


def test_dry_run_plans_every_task_and_builds_label_true_trees(bench, tmp_path, capsys):
    transfer, vtab = bench
    root = tmp_path / "vtab-1k"
    lists = {
        "dsprites_loc": _write_task(root, "dsprites_loc", 16, SIZES, 0),  # unpadded, "10" sorts before "2"
        "patch_camelyon": _write_task(root, "patch_camelyon", 2, SIZES, 1),
    }
    (root / "not_a_task").mkdir()
    work = tmp_path / "work"
    argv = ["--v2", "--vtab-root", str(root), "--dry-run", "--work-dir", str(work), "--out-dir"]
    transfer.main([*argv, str(tmp_path), "--methods", "lora_r4", "full", "--seeds", "0", "1"])
    out = capsys.readouterr().out
    grid = len(transfer.V2_ENTRIES["lora_r4"][2]) + len(transfer.V2_ENTRIES["full"][2])
    # 2 tasks x (the two grids + 2 labels x 2 seeds)
    assert f"dry run: 2 target(s), {2 * (grid + 4)} runs planned; nothing trained" in out
    assert "vtab_dsprites_loc: images {'sel_train': 800, 'sel_val': 200, 'train': 1000, 'test': 37}" in out
    split_of = {
        "train800.txt": "sel_train",
        "val200.txt": "sel_val",
        "train800val200.txt": "train",
        "test.txt": "test",
    }
    for task, n_cls in (("dsprites_loc", 16), ("patch_camelyon", 2)):
        for name, labels in lists[task].items():
            src = open_source(work / "v2" / "vtab" / task / split_of[name])
            assert len(src.classes) == n_cls  # empty classes keep their folder, so indices never shift
            assert collections.Counter(src.labels.tolist()) == collections.Counter(labels)
    assert not (tmp_path / "transfer_v2.md").exists()  # a dry run writes no table


def test_list_errors_name_the_file_and_line(bench, tmp_path):
    _, vtab = bench
    root = tmp_path / "vtab-1k"
    _write_task(root, "dtd", 47, SIZES, 2)
    (root / "dtd" / "val200.txt").write_text("images/im0.png 3\nimages/missing.png 4\n")
    with pytest.raises(DataError, match=r"val200\.txt:2: image .*missing\.png not found"):
        vtab.prepare_task(root, tmp_path / "w", "dtd")
    (root / "dtd" / "val200.txt").write_text("images/im0.png 47\n")
    with pytest.raises(DataError, match=r"val200\.txt:1: label 47 outside 0\.\.46"):
        vtab.prepare_task(root, tmp_path / "w", "dtd")
    (root / "dtd" / "test.txt").unlink()
    (root / "dtd" / "val200.txt").write_text("images/im0.png 1\n")
    with pytest.raises(DataError, match=r"test\.txt: VTAB-1k list file missing"):
        vtab.prepare_task(root, tmp_path / "w", "dtd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of the 19 VTAB-1k task folders"):
        vtab.present_tasks(tmp_path / "empty")
