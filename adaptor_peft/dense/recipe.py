"""Large-scale recipes (ImageNet b1/b2 and 384 fine-tune, ADE20K UperNet, COCO Mask R-CNN): strict loading.

A recipe is a YAML mapping of sections (see recipes/imagenet_b2.yaml). Every section's keys are checked:
a typo is an error that names the file, the key and the closest valid one. `variants:` holds named partial
overrides (COCO `3x`), merged over the base with `load_large_recipe(path, variant="3x")`. Files are found,
read and overridden (`section.key=value`) by the same functions as the classification recipes.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from ..train.recipes import RecipeError, apply_overrides, did_you_mean, read_recipe_file

__all__ = ["SECTIONS", "TASKS", "LargeRecipeError", "load_large_recipe", "override_large_recipe"]

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
_REQUIRED = ("name", "task", "model", "data", "optimizer", "schedule")


class LargeRecipeError(RecipeError):
    """A large-scale recipe is invalid: unknown section/key, missing key, bad value."""


def _check(recipe: dict[str, Any], where: str) -> None:
    for key, value in recipe.items():
        if key not in SECTIONS:
            raise LargeRecipeError(f"{where}: unknown section '{key}'{did_you_mean(key, list(SECTIONS))}")
        allowed = SECTIONS[key]
        if allowed is not None and value is not None:
            if not isinstance(value, dict):
                raise LargeRecipeError(
                    f"{where}: section '{key}' must be a mapping, got {type(value).__name__}"
                )
            for sub in value:
                if sub not in allowed:
                    raise LargeRecipeError(
                        f"{where}: unknown key '{key}.{sub}'{did_you_mean(sub, sorted(allowed))}"
                    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_large_recipe(
    source: str | os.PathLike | dict[str, Any], variant: str | None = None
) -> dict[str, Any]:
    """Read and validate a large-scale recipe (path, bare name in recipes/, or dict); merge a variant."""
    if isinstance(source, dict):
        recipe, where = copy.deepcopy(source), "recipe dict"
    else:
        recipe, where = read_recipe_file(source, LargeRecipeError)
    _check(recipe, where)
    variants = recipe.pop("variants", None) or {}
    for name, over in variants.items():
        _check(over, f"{where} (variant '{name}')")
    if variant is not None:
        if variant not in variants:
            raise LargeRecipeError(f"{where}: unknown variant '{variant}'; the recipe has {sorted(variants)}")
        recipe = _merge(recipe, variants[variant])
        recipe["name"] = f"{recipe['name']}_{variant}"
    for key in _REQUIRED:
        if key not in recipe:
            raise LargeRecipeError(f"{where}: missing section '{key}'")
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
    return recipe


def override_large_recipe(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings (YAML values) onto a loaded recipe, then validated again."""
    return load_large_recipe(apply_overrides(recipe, overrides, known_keys=list(SECTIONS)))
