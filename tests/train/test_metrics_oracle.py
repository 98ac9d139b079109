"""ClassificationMeter against hand-computed answers and against scikit-learn (shares no code with it).

Hand cases: small logits matrices whose answer can be read off by eye (argmax per row, rank of the
label per row). Random cases: scikit-learn's accuracy_score / top_k_accuracy_score / confusion_matrix
on the same logits, fed to the meter in several batches of different sizes. The meter defines no tie
rule of its own (it inherits torch's argmax / topk), so the random logits are continuous (no ties).

Top-5 is reported only for more than 5 classes (with C <= 5 every image is in the top 5, so a
"top5" of 100% would say nothing): test_top5_only_above_five_classes pins both sides of the boundary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score

from adaptor_peft.train.metrics import ClassificationMeter, accuracy

# 6 images, 5 classes (class 4 never appears as a label, and its logit is never the largest).
HAND_LOGITS = [
    [0.1, 2.0, 0.3, -1.0, -9.0],  # argmax 1, label 1: right
    [3.0, 0.0, 1.0, 2.0, -9.0],  # argmax 0, label 3: wrong
    [-2.0, -1.0, -3.0, 0.5, -9.0],  # argmax 3, label 2: wrong
    [0.0, 0.2, 5.0, 0.1, -9.0],  # argmax 2, label 2: right
    [1.0, 4.0, 2.0, 3.0, -9.0],  # argmax 1, label 0: wrong
    [2.5, 0.5, 1.5, 3.5, -9.0],  # argmax 3, label 1: wrong
]
HAND_LABELS = [1, 3, 2, 2, 0, 1]
HAND_CONFUSION = [  # rows: true class, columns: predicted class
    [0, 1, 0, 0, 0],  # label 0 -> predicted 1
    [0, 1, 0, 1, 0],  # label 1 -> predicted 1 and 3
    [0, 0, 1, 1, 0],  # label 2 -> predicted 3 and 2
    [1, 0, 0, 0, 0],  # label 3 -> predicted 0
    [0, 0, 0, 0, 0],  # class 4 absent
]
HAND_PER_CLASS = [0.0, 50.0, 50.0, 0.0, None]


def _meter(logits, labels, num_classes, splits=(), loss_sums=None):
    """Feed (logits, labels) to a fresh meter in batches cut at `splits`."""
    meter = ClassificationMeter(num_classes)
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    edges = [0, *splits, len(labels)]
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        meter.update(logits[a:b], labels[a:b], 0.0 if loss_sums is None else loss_sums[i])
    return meter.compute()


@pytest.mark.parametrize("splits", [(), (1,), (2, 3, 5)])
def test_hand_computed_top1_confusion_and_per_class(splits):
    m = _meter(HAND_LOGITS, HAND_LABELS, 5, splits)
    assert m["count"] == 6
    assert m["confusion"] == HAND_CONFUSION
    assert m["top1"] == pytest.approx(100.0 * 2 / 6)
    assert m["per_class"][:4] == pytest.approx(HAND_PER_CLASS[:4])
    assert m["per_class"][4] is None  # absent class: no accuracy, not 0%


def test_hand_computed_top5_on_seven_classes():
    ramp = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    mixed = [0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.7]  # ranking: 2, 5, 6, 0, 3, 4, 1
    logits = [ramp, ramp[::-1], mixed, mixed, mixed]
    labels = [0, 4, 1, 3, 2]
    # label ranks: 7th, 5th, 7th, 5th, 1st -> top-5 hits rows 1, 3, 4; top-1 hits row 4 only
    m = _meter(logits, labels, 7, splits=(2,))
    assert m["top5"] == pytest.approx(60.0)
    assert m["top1"] == pytest.approx(20.0)
    assert m["per_class"] == [0.0, 0.0, 100.0, 0.0, 0.0, None, None]


def test_top5_only_above_five_classes():
    """No "top5" key for C <= 5 classes (top-5 of 5 is always 100%); for 6 classes it is a real top-5."""
    m = _meter(HAND_LOGITS, HAND_LABELS, 5)
    assert "top5" not in m and m["top1"] == pytest.approx(100.0 * 2 / 6)
    three = [[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]
    m3 = _meter(three, [0, 2], 3)
    assert m3["top1"] == 0.0 and "top5" not in m3
    ramp = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # class 0 ranks 6th (out of the top 5), class 1 ranks 5th
    m6 = _meter([ramp, ramp, ramp, ramp], [0, 1, 0, 5], 6)
    # rows: 6th (miss), 5th (hit), 6th (miss), 1st (hit, also top-1)
    assert m6["top5"] == pytest.approx(50.0) and m6["top1"] == pytest.approx(25.0)


def test_loss_is_the_mean_of_the_given_sums():
    m = _meter(HAND_LOGITS, HAND_LABELS, 5, splits=(2, 3), loss_sums=[1.5, 0.25, 4.25])
    assert m["loss"] == pytest.approx(6.0 / 6)


def _random_case(seed, n, num_classes, present):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    labels = rng.integers(0, present, size=n)
    logits[np.arange(n) % 3 == 0, labels[np.arange(n) % 3 == 0]] += 1.5  # some right, many wrong
    return logits, labels


@pytest.mark.parametrize(
    "seed, n, num_classes, present, splits",
    [
        (0, 257, 10, 10, (64, 128, 200)),
        (1, 100, 12, 8, (1, 2, 50)),  # classes 8..11 absent from the labels
        (2, 33, 6, 6, ()),
    ],
)
def test_random_batches_match_scikit_learn(seed, n, num_classes, present, splits):
    logits, labels = _random_case(seed, n, num_classes, present)
    assert all(len(set(row.tolist())) == num_classes for row in logits)  # no ties
    m = _meter(logits, labels, num_classes, splits)
    classes = list(range(num_classes))
    preds = logits.argmax(axis=1)
    assert m["count"] == n
    assert m["top1"] == pytest.approx(100.0 * accuracy_score(labels, preds))
    top5 = top_k_accuracy_score(labels, logits, k=5, labels=classes)
    assert m["top5"] == pytest.approx(100.0 * top5)
    cm = confusion_matrix(labels, preds, labels=classes)
    assert m["confusion"] == cm.tolist()
    support = cm.sum(axis=1)
    for c in classes:
        if support[c] == 0:
            assert c >= present and m["per_class"][c] is None
        else:
            # per-class accuracy = recall of class c, from scikit-learn's matrix
            assert m["per_class"][c] == pytest.approx(100.0 * cm[c, c] / support[c])


def test_batch_accuracy_matches_scikit_learn():
    logits, labels = _random_case(3, 50, 7, 7)
    expected = 100.0 * accuracy_score(labels, logits.argmax(axis=1))
    assert accuracy(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(expected)
    assert accuracy(torch.tensor(HAND_LOGITS), torch.tensor(HAND_LABELS)) == pytest.approx(100.0 * 2 / 6)
