"""Mask R-CNN + FPN (torchvision) on the pyramid: a training step, inference, COCO evaluation."""

from __future__ import annotations

import math

import pytest
import torch

import adaptor_peft  # noqa: F401
from adaptor_peft.dense.detection import PyramidFPN, coco_results, detection_model, evaluate_coco
from adaptor_peft.dense.pyramid import build_pyramid

# Small RPN/RoI budgets: the tiny images have few anchors, and the defaults (2000 proposals, 512 RoIs)
# only cost CPU time here.
FAST = dict(
    min_size=64, max_size=96, fpn_channels=32, rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32,
    rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=32, box_batch_size_per_image=32,
    box_detections_per_img=8,
)  # fmt: skip
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 96)]
    targets = []
    for k, image in enumerate(images):
        h, w = image.shape[1:]
        boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [20.0, 10.0, 60.0, 50.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        targets.append(dict(boxes=boxes, labels=torch.tensor([1, 2]), masks=masks, image_id=torch.tensor(k)))
    return images, targets


def _model(name: str, **kwargs):
    return detection_model(name, 3, **FAST, **kwargs)


def test_pyramid_fpn_levels_and_strides():
    fpn = PyramidFPN(build_pyramid("test_vmamba"), out_channels=32)
    feats = fpn(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "0": (1, 32, 16, 24), "1": (1, 32, 8, 12), "2": (1, 32, 4, 6), "3": (1, 32, 2, 3),
        "pool": (1, 32, 1, 2),
    }  # fmt: skip


def test_maskrcnn_train_step_reaches_the_backbone_adaptors():
    model = _model("test_vmamba", adaptor=dict(num_heads=2, num_points=2)).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(math.isfinite(v.item()) and v.item() >= 0 for v in losses.values())
    sum(losses.values()).backward()
    op = model.backbone.body.layers[2].blocks[1].op
    for param in (op.adaptor_t.gamma, op.adaptor_s.convs[0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.backbone.body.patch_embed[0].weight.grad is None  # base frozen
    assert model.backbone.fpn.inner_blocks[0][0].weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_maskrcnn_on_a_b_model_trains_everything_and_predicts_in_image_coordinates():
    model = _model("test_mamba_adaptor").train()
    images, targets = _batch()
    losses = model(images, targets)
    sum(losses.values()).backward()
    gamma = model.backbone.body.layers[0].blocks[0].op.adaptor_t.gamma
    assert gamma.grad is not None and gamma.grad.abs().sum() > 0
    patch = model.backbone.body.patch_embed[0].weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, image in zip(out, images, strict=True):
        h, w = image.shape[1:]
        assert o["masks"].shape[1:] == (1, h, w)
        if len(o["boxes"]):
            assert float(o["boxes"][:, 2].max()) <= w and float(o["boxes"][:, 3].max()) <= h


class _Oracle(torch.nn.Module):
    """Returns the ground truth as detections (score 1): COCO AP must be exactly 1."""

    def __init__(self, targets: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.targets = targets

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        t = self.targets.pop(0)
        n = len(t["boxes"])
        return [
            dict(
                boxes=t["boxes"], labels=t["labels"], scores=torch.ones(n), masks=t["masks"][:, None].float()
            )
        ]


def _coco_gt(targets):
    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    images, anns = [], []
    for t in targets:
        h, w = t["masks"].shape[1:]
        images.append(dict(id=int(t["image_id"]), height=h, width=w))
        for box, label, m in zip(t["boxes"].tolist(), t["labels"].tolist(), t["masks"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.numpy()))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = box
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=int(t["image_id"]),
                    category_id=label,
                    iscrowd=0,
                    bbox=[x0, y0, x1 - x0, y1 - y0],
                    area=float(m.sum()),
                    segmentation=rle,
                )
            )
    coco = COCO()
    coco.dataset = dict(
        images=images, annotations=anns, categories=[dict(id=1, name="a"), dict(id=2, name="b")]
    )
    coco.createIndex()
    return coco


def test_evaluate_coco_scores_the_ground_truth_as_perfect():
    images, targets = _batch()
    coco = _coco_gt(targets)
    batches = [([im], [t]) for im, t in zip(images, targets, strict=True)]
    scores = evaluate_coco(_Oracle(list(targets)), batches, coco)
    assert scores["bbox_AP"] == pytest.approx(1.0) and scores["segm_AP"] == pytest.approx(1.0)
    assert scores["bbox_AP50"] == pytest.approx(1.0)


def test_coco_results_convert_boxes_and_categories():
    out = [
        dict(
            boxes=torch.tensor([[1.0, 2.0, 11.0, 7.0]]), scores=torch.tensor([0.5]), labels=torch.tensor([1])
        )
    ]
    boxes, segms = coco_results(out, [42], label_to_category={1: 18})
    assert boxes == [dict(image_id=42, category_id=18, score=0.5, bbox=[1.0, 2.0, 10.0, 5.0])]
    assert segms == []
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found: /nonexistent.json"):
        evaluate_coco(_Oracle([]), [], "/nonexistent.json")
