"""Classification metrics from gathered predictions: top-1, top-5, per-class accuracy, confusion matrix.

Top-5 is reported only where it means something: with 5 classes or fewer every image is in the top 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: the k of the top-k accuracy; reported only for more than TOP_K classes
TOP_K = 5


@dataclass
class ClassificationMeter:
    """Accumulates (logits, labels) batches; ``compute`` gives the summary dict."""

    num_classes: int
    confusion: torch.Tensor = field(init=False)
    top5_correct: int = 0
    loss_sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float = 0.0) -> None:
        """Add one batch of logits (B, C) and integer labels (B,)."""
        logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
        preds = logits.argmax(dim=1)
        index = labels * self.num_classes + preds
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, -1)
        if self.num_classes > TOP_K:
            topk = logits.topk(TOP_K, dim=1).indices
            self.top5_correct += int((topk == labels[:, None]).any(dim=1).sum())
        self.loss_sum += float(loss_sum)
        self.count += int(labels.numel())

    def compute(self) -> dict:
        """top1, top5 (%, only for more than 5 classes), mean loss, per_class accuracy (%, None for absent
        classes), confusion."""
        n = max(self.count, 1)
        support = self.confusion.sum(dim=1)
        correct = self.confusion.diag()
        per_class = [
            (100.0 * int(c) / int(s)) if int(s) else None for c, s in zip(correct.tolist(), support.tolist())
        ]
        out = {"top1": 100.0 * int(correct.sum()) / n}
        if self.num_classes > TOP_K:
            out["top5"] = 100.0 * self.top5_correct / n
        return {
            **out,
            "loss": self.loss_sum / n,
            "count": self.count,
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
        }


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of one batch."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())
