"""Dense tasks on VMamba / Mamba-Adaptor pyramids: UPerNet segmentation (smp), Mask R-CNN detection
(torchvision), mIoU and COCO evaluation, optional MMDetection / mmsegmentation registration, the
large-scale recipes (`recipe`, `builders`) and their runner (`python -m adaptor_peft.dense.run RECIPE`,
with `--dry-run` a few updates of the tiny model on synthetic data).

Nothing heavy is imported at package import time: segmentation-models-pytorch and pycocotools (the
`dense` extra) are only needed when the function that uses them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "segmentation_model": "segmentation",
    "multiscale_inference": "segmentation",
    "evaluate_segmentation": "segmentation",
    "MS_SCALES": "segmentation",
    "detection_model": "detection",
    "PyramidFPN": "detection",
    "coco_results": "detection",
    "evaluate_coco": "detection",
    "SegmentationMetric": "metrics",
    "confusion_matrix": "metrics",
    "scores_from_confusion": "metrics",
    "register_mm_backbones": "mm_registry",
    "load_large_recipe": "recipe",
    "dry_run": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use (keeps smp/pycocotools optional)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptor_peft.dense' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
