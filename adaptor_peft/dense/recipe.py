"""Large-scale recipes (ImageNet b1/b2 and 384 fine-tune, ADE20K UperNet, COCO Mask R-CNN): strict loading.

A recipe is a YAML mapping of sections (see recipes/imagenet_b2.yaml). Every section's keys are checked:
a typo is an error that names the file, the key and the closest valid one. `variants:` holds named partial
overrides (COCO `3x`), merged over the base with `load_large_recipe(path, variant="3x")`. The loading
itself is the trainer's (`train.recipes.load_sectioned_recipe`): this module declares the schema.
"""

from __future__ import annotations

import os
from typing import Any

from ..train.recipes import RecipeError, SectionSchema, load_sectioned_recipe

__all__ = ["SCHEMA", "SECTIONS", "TASKS", "LargeRecipeError", "load_large_recipe", "override_large_recipe"]

TASKS = ("classification", "segmentation", "detection")

SECTIONS: dict[str, set[str] | None] = {
    "name": None, "task": None, "description": None, "launch": None, "mixed_precision": None,
    "grad_checkpointing": None, "output_dir": None, "variants": None,
    "model": {"name", "checkpoint", "kwargs", "decoder_channels", "fpn_channels"},
    "peft": {"adaptor", "freeze_base"},
    "data": {
        "train", "val", "ann_train", "ann_val", "train_size", "img_size", "batch_size", "num_classes",
        "ignore_index", "reduce_zero_label", "mean", "std", "crop_pct", "interpolation", "min_size",
        "max_size", "num_workers",
    },
    "augment": {
        "auto_augment", "re_prob", "re_mode", "re_count", "color_jitter", "hflip", "scale", "ratio",
        "interpolation", "mixup", "cutmix", "mixup_prob", "switch_prob", "label_smoothing", "ratio_range",
        "photometric",
    },
    "optimizer": {"opt", "lr", "weight_decay", "betas", "eps", "clip_grad"},
    "schedule": {
        "sched", "epochs", "iterations", "warmup_epochs", "warmup_iters", "warmup_lr", "warmup_ratio",
        "min_lr", "decay_milestones", "decay_rate", "warmup_prefix",
    },
    "ema": {"decay", "use_warmup"},
    "eval": {"scales", "flip", "interval", "metric"},
}  # fmt: skip


class LargeRecipeError(RecipeError):
    """A large-scale recipe is invalid: unknown section/key, missing key, bad value."""


def _check_values(recipe: dict[str, Any], where: str) -> None:
    if recipe["task"] not in TASKS:
        raise LargeRecipeError(f"{where}: task '{recipe['task']}' must be one of {list(TASKS)}")
    if "name" not in recipe["model"]:
        raise LargeRecipeError(f"{where}: missing key 'model.name'")
    for key in ("batch_size", "num_classes", "img_size"):
        if not isinstance(recipe["data"].get(key), int) or recipe["data"][key] < 1:
            raise LargeRecipeError(
                f"{where}: 'data.{key}' must be a positive integer, got {recipe['data'].get(key)!r}"
            )
    sched = recipe["schedule"]
    if ("epochs" in sched) == ("iterations" in sched):
        raise LargeRecipeError(f"{where}: give exactly one of 'schedule.epochs' and 'schedule.iterations'")
    if "epochs" in sched and not recipe["data"].get("train_size"):
        raise LargeRecipeError(f"{where}: an epoch schedule needs 'data.train_size' (images per epoch)")


SCHEMA = SectionSchema(
    {k: None if v is None else frozenset(v) for k, v in SECTIONS.items()},
    required=("name", "task", "model", "data", "optimizer", "schedule"),
    error=LargeRecipeError,
    check=_check_values,
)


def load_large_recipe(
    source: str | os.PathLike | dict[str, Any], variant: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Read and validate a large-scale recipe (path, bare name in recipes/, or dict); merge a variant;
    apply ``section.key=value`` overrides."""
    return load_sectioned_recipe(source, SCHEMA, variant, overrides)


def override_large_recipe(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings (YAML values) onto a loaded recipe, then validated again."""
    return load_sectioned_recipe(recipe, SCHEMA, overrides=overrides)
