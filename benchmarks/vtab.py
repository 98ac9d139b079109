"""VTAB-1k folder layout for ``benchmarks/transfer.py --v2 --vtab-root DIR`` (the 19 tasks).

The layout the PEFT literature shares (NOAH, MambaPEFT's ``data/vtab-1k``): one folder per task holding
its images and four list files, each line ``<path relative to the task folder> <integer label>``:

- ``train800.txt`` / ``val200.txt``: the selection split (train on 800, choose on 200);
- ``train800val200.txt``: the 1000 images of the final run;
- ``test.txt``: evaluated once per final run.

The trainer reads ImageFolder trees, so each list becomes a tree of symbolic links
``<work>/<task>/<split>/<label as 3 digits>/<line number>_<file name>`` with a folder for every class of
the task (empty ones included), so that class index = label in every split, whatever the split holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from adaptor_peft.atomic import atomic_write_text
from adaptor_peft.train.data import DataError

#: task folder name -> number of classes.
VTAB_TASKS: dict[str, int] = {
    "cifar": 100,
    "caltech101": 102,
    "dtd": 47,
    "oxford_flowers102": 102,
    "oxford_iiit_pet": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}
#: benchmark split -> list file.
SPLIT_FILES = {
    "sel_train": "train800.txt",
    "sel_val": "val200.txt",
    "train": "train800val200.txt",
    "test": "test.txt",
}
EXPECTED_SIZES = {"sel_train": 800, "sel_val": 200, "train": 1000}


def read_list(task_dir: Path, name: str, num_classes: int) -> list[tuple[Path, int]]:
    """(image path, label) per line of ``task_dir/name``; DataError names the file and line."""
    path = task_dir / name
    if not path.is_file():
        raise DataError(f"{path}: VTAB-1k list file missing (expected {sorted(SPLIT_FILES.values())})")
    entries = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{i}: expected '<image path> <integer label>', got {line!r}")
        image, label = task_dir / parts[0], int(parts[1])
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{i}: label {label} outside 0..{num_classes - 1} for this task")
        if not image.is_file():
            raise DataError(f"{path}:{i}: image {image} not found")
        entries.append((image, label))
    if not entries:
        raise DataError(f"{path}: the list is empty")
    return entries


def link_tree(entries: list[tuple[Path, int]], out: Path, num_classes: int) -> Path:
    """An ImageFolder tree of symlinks for ``entries`` at ``out`` (rebuilt only when the list changed)."""
    key = hashlib.sha256("\n".join(f"{p.resolve()} {y}" for p, y in entries).encode()).hexdigest()
    stamp = out / ".list_sha256"
    if stamp.is_file() and stamp.read_text() == key:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for c in range(num_classes):
            (tmp / f"{c:03d}").mkdir()
        for i, (image, label) in enumerate(entries):
            os.symlink(image.resolve(), tmp / f"{label:03d}" / f"{i:06d}_{image.name}")
        atomic_write_text(tmp / ".list_sha256", key)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def prepare_task(root: Path, work: Path, task: str) -> dict[str, Path]:
    """The four ImageFolder trees (sel_train, sel_val, train, test) of one task under ``work``."""
    if task not in VTAB_TASKS:
        raise DataError(f"unknown VTAB-1k task '{task}'; known: {list(VTAB_TASKS)}")
    task_dir = root / task
    if not task_dir.is_dir():
        raise DataError(f"{task_dir}: task folder missing under --vtab-root {root}")
    n = VTAB_TASKS[task]
    return {
        split: link_tree(read_list(task_dir, name, n), work / task / split, n)
        for split, name in SPLIT_FILES.items()
    }


def present_tasks(root: Path) -> list[str]:
    """The VTAB-1k tasks that have a folder under ``root``, in the canonical order."""
    if not root.is_dir():
        raise DataError(f"--vtab-root {root} is not a directory")
    tasks = [t for t in VTAB_TASKS if (root / t).is_dir()]
    if not tasks:
        raise DataError(f"--vtab-root {root}: none of the 19 VTAB-1k task folders ({list(VTAB_TASKS)})")
    return tasks
