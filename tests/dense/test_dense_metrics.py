"""mIoU / accuracy against a hand-computed confusion matrix (mmseg semantics)."""

from __future__ import annotations

import math

import pytest
import torch

from adaptor_peft.dense.metrics import SegmentationMetric, confusion_matrix, scores_from_confusion

# target/pred pairs by hand (255 ignored): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,1)
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
CM = torch.tensor([[1, 1, 0], [0, 3, 0], [1, 0, 1]])


def test_confusion_matrix_matches_hand_count():
    assert torch.equal(confusion_matrix(PRED, TARGET, 3), CM)


def test_scores_match_hand_computation():
    s = scores_from_confusion(CM)
    # IoU = tp / (label + pred - tp): class 0 1/(2+2-1), class 1 3/(3+4-3), class 2 1/(2+1-1)
    assert s["IoU"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert s["mIoU"] == pytest.approx(19 / 36)
    assert s["aAcc"] == pytest.approx(5 / 7)
    assert s["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    s = scores_from_confusion(confusion_matrix(PRED, TARGET, 4))
    assert math.isnan(s["IoU"][3])
    assert s["mIoU"] == pytest.approx(19 / 36)


def test_metric_accumulates_batches_and_takes_logits():
    metric = SegmentationMetric(3)
    metric.update(PRED[:1], TARGET[:1])
    logits = torch.nn.functional.one_hot(PRED[1:], 3).permute(0, 2, 1).float()  # (1, 3, 4) as (B, C, W)
    metric.update(logits, TARGET[1:])
    assert torch.equal(metric.confusion, CM)
    assert metric.compute()["mIoU"] == pytest.approx(19 / 36)


def test_label_outside_the_classes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"target holds class 7, outside 0\.\.2 \(ignore_index=255\)"):
        confusion_matrix(PRED, torch.full_like(TARGET, 7), 3)
    with pytest.raises(ValueError, match=r"pred shape \(8,\) != target shape \(2, 4\)"):
        confusion_matrix(PRED.flatten(), TARGET, 3)
