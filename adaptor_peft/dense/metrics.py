"""Semantic-segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy (mmseg semantics).

mIoU is the mean IoU over the classes that occur in the predictions or the labels (classes whose union is
empty are NaN and left out of the mean, as mmsegmentation's `IoUMetric` does); pixels labelled
`ignore_index` count nowhere.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SegmentationMetric", "confusion_matrix", "scores_from_confusion"]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = label, columns = prediction; ignored pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, t in (("target", target), ("pred", pred)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            bad = t[(t < 0) | (t >= num_classes)][0].item()
            raise ValueError(
                f"{name} holds class {bad}, outside 0..{num_classes - 1} (ignore_index={ignore_index})"
            )
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def scores_from_confusion(cm: torch.Tensor) -> dict[str, float | list[float]]:
    """mIoU, per-class IoU, mAcc (mean class recall), aAcc (pixel accuracy) from a confusion matrix."""
    cm = cm.double()
    tp = cm.diag()
    label_total = cm.sum(1)
    pred_total = cm.sum(0)
    union = label_total + pred_total - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    acc = torch.where(label_total > 0, tp / label_total.clamp_min(1), torch.full_like(tp, math.nan))
    total = float(cm.sum())

    def nanmean(t: torch.Tensor) -> float:
        valid = t[~torch.isnan(t)]
        return float(valid.mean()) if valid.numel() else math.nan

    return {
        "mIoU": nanmean(iou),
        "mAcc": nanmean(acc),
        "aAcc": float(tp.sum()) / total if total else math.nan,
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


class SegmentationMetric:
    """Accumulates a confusion matrix over batches: `update(pred, target)`, then `compute()`."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: pred is class indices (B, H, W) or logits (B, C, H, W); target (B, H, W)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, float | list[float]]:
        """Scores of everything accumulated (see scores_from_confusion)."""
        return scores_from_confusion(self.confusion)
