"""The large-scale runner end to end on tiny on-disk datasets (ImageFolder, ADE20K layout, COCO json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

import adaptor_peft  # noqa: F401

pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("pycocotools")
from adaptor_peft.dense.recipe_dryrun import RECIPES_DIR  # noqa: E402
from adaptor_peft.dense.run import run  # noqa: E402


def _image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_imagenet_recipe_runs_on_an_image_folder(tmp_path):
    for split in ("train", "val"):
        for k, cls in enumerate(["a", "b", "a", "b"]):
            _image(tmp_path / "data" / split / cls / f"{k}.png", 40, 48, k)
    out = tmp_path / "run"
    result = run(
        RECIPES_DIR / "imagenet_b1.yaml",
        overrides=[
            f"data.train={tmp_path}/data/train",
            f"data.val={tmp_path}/data/val",
            "data.batch_size=2",
            "data.num_classes=2",
            "data.num_workers=0",
            "model.name=test_mamba_adaptor",
            f"output_dir={out}",
            "mixed_precision=no",
        ],  # fmt: skip
        max_steps=2,
        img_size=32,
    )
    assert result["last"]["update"] == 2 and result["eval"]["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0)
    logs = _lines(out / "metrics.jsonl")
    assert [rec["update"] for rec in logs] == [1, 2, 2] and logs[0]["lr"] == pytest.approx(1e-6)
    assert set(load_file(out / "model_ema.safetensors")) == set(load_file(out / "model.safetensors"))
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.jsonl",
        "model.safetensors",
        "model_ema.safetensors",
        "recipe.yaml",
    ]


def test_ade20k_recipe_runs_on_the_ade_layout(tmp_path):
    root = tmp_path / "ade"
    for split in ("training", "validation"):
        for k in range(2):
            _image(root / "images" / split / f"im{k}.jpg", 48, 64, k)
            mask = np.random.default_rng(k).integers(0, 4, (48, 64), dtype=np.uint8)  # 0 = "other" -> ignored
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "annotations" / split / f"im{k}.png")
    out = tmp_path / "run"
    result = run(
        RECIPES_DIR / "ade20k_upernet_peft.yaml",
        overrides=[
            f"data.train={root}",
            f"data.val={root}",
            "data.batch_size=2",
            "data.num_classes=3",
            "data.num_workers=0",
            "model.name=test_vmamba",
            "model.checkpoint=null",
            "model.decoder_channels=32",
            "eval.scales=[0.5,1.0]",
            f"output_dir={out}",
        ],  # fmt: skip
        max_steps=2,
        img_size=32,
    )
    assert result["last"]["update"] == 2
    assert 0.0 <= result["eval"]["mIoU_ss"] <= 100.0 and 0.0 <= result["eval"]["mIoU_ms"] <= 100.0
    assert any(".adaptor_t." in k for k in load_file(out / "model.safetensors"))


def test_coco_recipe_runs_on_a_coco_json(tmp_path):
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for k in range(2):
        _image(tmp_path / "img" / f"{k}.jpg", 64, 80, k)
        images.append(dict(id=k + 1, file_name=f"{k}.jpg", height=64, width=80))
        m = np.zeros((64, 80), dtype=np.uint8)
        m[10:40, 12:50] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        box = [12, 10, 38, 30]
        anns.append(
            dict(id=k + 1, image_id=k + 1, category_id=7, iscrowd=0, bbox=box, area=1140.0, segmentation=rle)
        )
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(images=images, annotations=anns, categories=[dict(id=7, name="x")])))
    out = tmp_path / "run"
    result = run(
        RECIPES_DIR / "coco_maskrcnn.yaml",
        overrides=[
            f"data.train={tmp_path}/img",
            f"data.val={tmp_path}/img",
            f"data.ann_train={ann}",
            f"data.ann_val={ann}",
            "data.batch_size=2",
            "data.num_classes=2",
            "data.num_workers=0",
            "model.name=test_mamba_adaptor",
            "model.checkpoint=null",
            "model.fpn_channels=32",
            f"output_dir={out}",
        ],  # fmt: skip
        max_steps=1,
        img_size=64,
    )
    assert result["last"]["update"] == 1 and result["last"]["lr"] == pytest.approx(1e-7)
    assert set(result["eval"]) >= {"bbox_AP", "segm_AP"} and 0.0 <= result["eval"]["bbox_AP"] <= 1.0
