"""Object detection / instance segmentation: torchvision Mask R-CNN + FPN on a VMamba / Mamba-Adaptor pyramid.

`PyramidFPN` plays the part of torchvision's `BackboneWithFPN`: the normed 4-level pyramid (strides
4-32, `outnorm{i}` as in the official mmdet backbone) goes through a `FeaturePyramidNetwork` (256
channels) with an extra max-pooled level, giving the {"0", "1", "2", "3", "pool"} maps Mask R-CNN's RPN
and RoI heads expect. `evaluate_coco` scores predictions with pycocotools (box and mask AP).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from adaptor_peft.adaptors import MambaAdaptorConfig
from adaptor_peft.models.backbone import VMambaBackbone

from .pyramid import build_pyramid, prepare_pyramid

__all__ = ["PyramidFPN", "coco_results", "detection_model", "evaluate_coco"]


class PyramidFPN(nn.Module):
    """VMambaBackbone -> torchvision FeaturePyramidNetwork (+ LastLevelMaxPool); `out_channels` for heads."""

    def __init__(self, body: VMambaBackbone, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """(B, 3, H, W) -> OrderedDict of FPN maps "0".."3" (strides 4-32) and "pool" (stride 64)."""
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def detection_model(
    backbone: str = "mamba_adaptor_b2",
    num_classes: int = 81,
    *,
    checkpoint: str | os.PathLike | None = None,
    adaptor: MambaAdaptorConfig | dict[str, Any] | None = None,
    freeze_base: bool = True,
    fpn_channels: int = 256,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    trust_pickle: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    **maskrcnn_kwargs: Any,
) -> nn.Module:
    """torchvision MaskRCNN on a VMamba / Mamba-Adaptor pyramid with an FPN.

    num_classes counts the background (COCO: 80 + 1 = 81, mmdet's 80 foreground classes). min_size may be
    a tuple (a random short side per training batch: the 3x multi-scale schedule). checkpoint/adaptor/
    freeze_base: as in segmentation_model. maskrcnn_kwargs go to torchvision's MaskRCNN.
    """
    from torchvision.models.detection import MaskRCNN

    body = build_pyramid(backbone, **(backbone_kwargs or {}))
    prepare_pyramid(body, checkpoint, adaptor, freeze_base, trust_pickle)
    sizes = tuple(min_size) if isinstance(min_size, Sequence) else min_size
    return MaskRCNN(
        PyramidFPN(body, fpn_channels), num_classes=num_classes, min_size=sizes, max_size=max_size,
        **maskrcnn_kwargs,
    )  # fmt: skip


def coco_results(
    outputs: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category: dict[int, int] | None = None,
    mask_threshold: float = 0.5,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """torchvision detections -> COCO result lists (bbox in xywh, segm as RLE), one pair per call."""
    import numpy as np
    from pycocotools import mask as mask_utils

    boxes_out: list[dict[str, Any]] = []
    segms_out: list[dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu().double()
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        masks = out.get("masks")
        for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            cat = label_to_category[labels[j]] if label_to_category else int(labels[j])
            common = {"image_id": int(image_id), "category_id": cat, "score": float(scores[j])}
            boxes_out.append(dict(common, bbox=[x0, y0, x1 - x0, y1 - y0]))
            if masks is not None:
                binary = (masks[j, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
                rle = mask_utils.encode(np.asfortranarray(binary))
                rle["counts"] = rle["counts"].decode("ascii")
                segms_out.append(dict(common, segmentation=rle))
    return boxes_out, segms_out


def evaluate_coco(
    model: nn.Module,
    batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[dict[str, Any]]]],
    coco_gt: Any,
    iou_types: Sequence[str] = ("bbox", "segm"),
    label_to_category: dict[int, int] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """COCO AP through pycocotools: batches of (images, targets with "image_id"); returns {"bbox_AP": ...}.

    coco_gt: a pycocotools COCO object (or the path of a COCO-format annotation json).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not isinstance(coco_gt, COCO):
        path = os.fspath(coco_gt)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        coco_gt = COCO(path)
    was_training = model.training
    model.eval()
    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
    try:
        with torch.no_grad():
            for images, targets in batches:
                if device is not None:
                    images = [im.to(device) for im in images]
                outputs = model(list(images))
                ids = [int(t["image_id"]) for t in targets]
                b, s = coco_results(outputs, ids, label_to_category)
                results["bbox"] += b
                results["segm"] += s
    finally:
        model.train(was_training)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    scores: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in results:
            raise ValueError(f"iou_types holds {iou_type!r}; expected 'bbox' and/or 'segm'")
        if not results[iou_type]:
            scores.update({f"{iou_type}_{n}": 0.0 for n in names})
            continue
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results[iou_type]), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        scores.update({f"{iou_type}_{n}": float(v) for n, v in zip(names, evaluator.stats[:6], strict=True)})
    return scores
