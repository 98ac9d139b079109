"""Class identity between a model and a dataset: evaluation data is matched to the model's classes by name.

A model trained by `adaptor-peft train` carries its class names. A dataset whose classes are named (an
ImageFolder's folders, an npz ``classes`` array, a ``datasets`` ClassLabel) is relabelled so that its
class "square" is the model's "square", whatever position either has; names the model does not know are
refused. Data without names (an npz of x and y only) is taken by position, as its labels are numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import DataError, ImageSource


class RelabeledSource(ImageSource):
    """A view of another source whose labels index the model's classes instead of the source's own."""

    def __init__(self, base: ImageSource, labels: np.ndarray, classes: list[str]) -> None:
        super().__init__(labels, classes, base.source)
        self.base, self.named_classes = base, True

    def load(self, index: int) -> Any:
        """Return the base image at ``index``."""
        return self.base.load(index)


def align_classes(source: ImageSource, model_classes: list[str]) -> ImageSource:
    """``source`` with labels in the model's class order: by name when the source names its classes,
    else by position (checked to fit the head). DataError naming the unknown classes otherwise."""
    if not source.named_classes:
        source.check_labels(len(model_classes))
        return source
    index = {}
    for i, name in enumerate(model_classes):
        index.setdefault(str(name), i)
    counts = np.bincount(source.labels, minlength=len(source.classes)) if len(source) else np.zeros(0)
    unknown = [str(c) for c, n in zip(source.classes, counts) if n and str(c) not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        known = ", ".join(repr(str(c)) for c in model_classes[:20]) + (
            " ..." if len(model_classes) > 20 else ""
        )
        numbered = all(str(c) == str(i) for i, c in enumerate(model_classes))
        why = " (it was trained on data without class names)" if numbered else ""
        raise DataError(
            f"{source.source}: {len(unknown)} class(es) the model does not know: {shown}; the model's "
            f"classes are {known}{why}. Evaluation matches classes by name: rename or remove those classes"
        )
    mapping = np.array([index.get(str(c), -1) for c in source.classes], dtype=np.int64)
    labels = mapping[source.labels] if len(source) else source.labels
    if np.array_equal(labels, source.labels) and list(map(str, source.classes)) == list(
        map(str, model_classes)
    ):
        return source
    return RelabeledSource(source, labels, [str(c) for c in model_classes])


def classes_without_examples(source: ImageSource, model_classes: list[str]) -> list[str]:
    """The model's classes that no example of ``source`` (already aligned) belongs to."""
    counts = np.bincount(source.labels, minlength=len(model_classes))
    return [str(c) for c, n in zip(model_classes, counts) if n == 0]
