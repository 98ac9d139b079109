"""The large-scale runner end to end on tiny on-disk datasets (ImageFolder, ADE20K layout, COCO json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load_file

import adaptor_peft  # noqa: F401

pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("pycocotools")
from adaptor_peft.dense.builders import build_model  # noqa: E402
from adaptor_peft.dense.run import run  # noqa: E402
from adaptor_peft.train.recipes import RECIPES_DIR  # noqa: E402


def _image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _saved_model(out, weights, img_size):
    """The run's model rebuilt from its resolved recipe, with the weights it saved, in eval mode."""
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    model = build_model(recipe, img_size=img_size)
    model.load_state_dict(load_file(out / weights))
    return model.eval(), recipe


def test_imagenet_recipe_runs_on_an_image_folder(tmp_path):
    for split, names in (("train", "abab"), ("val", "abbb")):  # unbalanced val: a constant guess is 25 or 75%
        for k, cls in enumerate(names):
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
    assert result["last"]["update"] == 2
    # top-1 recomputed here: the EMA weights (what the runner evaluates), timm's own eval transform
    # (shorter side to 32 / crop_pct, centre crop, normalise), labels from the sorted class folders
    from timm.data import create_transform

    model, recipe = _saved_model(out, "model_ema.safetensors", 32)
    d = recipe["data"]
    tf = create_transform(32, crop_pct=d["crop_pct"], interpolation=d["interpolation"], mean=d["mean"],
                          std=d["std"])  # fmt: skip
    files = sorted((tmp_path / "data" / "val").glob("*/*.png"))
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([["a", "b"].index(f.parent.name) for f in files])
    with torch.no_grad():
        preds = model(x).argmax(-1).numpy()
    assert result["eval"]["top1"] == pytest.approx(100.0 * np.mean(preds == labels))
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
    # mIoU recomputed here from the saved weights: images normalised by hand, padded to a multiple of 32
    # (bottom/right), logits cropped back; multi-scale = softmax averaged over scales 0.5, 1 and flips
    model, recipe = _saved_model(out, "model.safetensors", 32)
    mean, std = (torch.tensor(recipe["data"][k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    images, masks = [], []
    for k in range(2):
        img = np.asarray(Image.open(root / "images" / "validation" / f"im{k}.jpg").convert("RGB"))
        images.append((torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0 - mean) / std)
        m = np.asarray(Image.open(root / "annotations" / "validation" / f"im{k}.png")).astype(np.int64)
        masks.append(np.where(m == 0, -1, m - 1))  # ADE: 0 = "other", ignored; 1..3 -> 0..2

    def probs_at(x, scale, flip):
        h, w = x.shape[-2:]
        xs = x if scale == 1.0 else F.interpolate(x, (round(h * scale), round(w * scale)), mode="bilinear")
        xs = xs.flip(-1) if flip else xs
        sh, sw = xs.shape[-2:]
        logits = model(F.pad(xs, (0, -sw % 32, 0, -sh % 32)))[..., :sh, :sw]
        logits = logits.flip(-1) if flip else logits
        logits = logits if scale == 1.0 else F.interpolate(logits, (h, w), mode="bilinear")
        return logits.softmax(1)

    def miou(preds):
        cm = np.zeros((3, 3), dtype=np.int64)
        for pred, mask in zip(preds, masks):
            keep = mask >= 0
            np.add.at(cm, (mask[keep], pred[keep]), 1)
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        return 100.0 * np.mean(np.diag(cm)[union > 0] / union[union > 0])

    with torch.no_grad():
        single = [probs_at(x, 1.0, False)[0].argmax(0).numpy() for x in images]
        multi = [
            sum(probs_at(x, s, f) for s in (0.5, 1.0) for f in (False, True))[0].argmax(0).numpy()
            for x in images
        ]
    assert result["eval"]["mIoU_ss"] == pytest.approx(miou(single), abs=1e-9)
    assert result["eval"]["mIoU_ms"] == pytest.approx(miou(multi), abs=1e-9)
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
    # bbox AP recomputed here: the saved detector on the images (float in [0, 1]), its detections turned
    # into a COCO result list by hand (label 1 -> category 7, xyxy -> xywh), scored by pycocotools itself
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model, _ = _saved_model(out, "model.safetensors", 64)
    x = [
        torch.from_numpy(np.asarray(Image.open(tmp_path / "img" / f"{k}.jpg").convert("RGB")).copy())
        for k in range(2)
    ]
    with torch.no_grad():
        outputs = model([im.permute(2, 0, 1).float() / 255.0 for im in x])
    dets = [
        dict(image_id=k + 1, category_id={1: 7}[label], score=score, bbox=[x0, y0, x1 - x0, y1 - y0])
        for k, o in enumerate(outputs)
        for (x0, y0, x1, y1), label, score in zip(
            o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist()
        )
    ]
    assert dets, "the detector found nothing: the AP check below would be vacuous"
    gt = COCO(str(ann))
    evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert {n: result["eval"][f"bbox_{n}"] for n in names} == pytest.approx(
        dict(zip(names, evaluator.stats[:6]))
    )
    assert result["eval"]["bbox_AP50"] > 0  # a non-trivial score: the comparison can fail
    assert "segm_AP" in result["eval"]
