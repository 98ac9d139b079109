"""Large-scale recipes (ImageNet b1/b2 and 384 fine-tune, ADE20K UperNet, COCO Mask R-CNN): strict loading,
the builders each recipe names (timm optimizer / scheduler / transforms / Mixup / EMA, the dense models),
and a dry run that takes a few real optimizer steps on tiny synthetic data so a recipe cannot rot.

A recipe is a YAML mapping of sections (see recipes/imagenet_b2.yaml). Every section's keys are checked:
a typo is an error that names the file, the key and the closest valid one. `variants:` holds named partial
overrides (COCO `3x`), merged over the base with `load_large_recipe(path, variant="3x")`.

The full runs need GPUs and the datasets; the dry run swaps in the tiny test model of the same family,
a small resolution and batch, and synthetic images, and keeps everything else (optimizer, its LR and
decay groups, the schedule as a function of the step, augmentations, Mixup/CutMix, EMA, PEFT freezing).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

__all__ = ["DryRunResult", "LargeRecipeError", "dry_run", "load_large_recipe", "schedule_lr"]

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
TASKS = ("classification", "segmentation", "detection")

_SECTIONS: dict[str, set[str] | None] = {
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


class LargeRecipeError(ValueError):
    """A large-scale recipe is invalid: unknown section/key, missing key, bad value."""


def _closest(key: str, valid: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check(recipe: dict[str, Any], where: str) -> None:
    for key, value in recipe.items():
        if key not in _SECTIONS:
            raise LargeRecipeError(f"{where}: unknown section '{key}'{_closest(key, list(_SECTIONS))}")
        allowed = _SECTIONS[key]
        if allowed is not None and value is not None:
            if not isinstance(value, dict):
                raise LargeRecipeError(
                    f"{where}: section '{key}' must be a mapping, got {type(value).__name__}"
                )
            for sub in value:
                if sub not in allowed:
                    raise LargeRecipeError(f"{where}: unknown key '{key}.{sub}'{_closest(sub, allowed)}")


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
        path = Path(source)
        if not path.is_file():
            path = RECIPES_DIR / (path.name if path.suffix else f"{path.name}.yaml")
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {source}")
        where = str(path)
        try:
            recipe = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise LargeRecipeError(f"{where}: not valid YAML: {exc}") from None
        if not isinstance(recipe, dict):
            raise LargeRecipeError(f"{where}: a recipe must be a YAML mapping, got {type(recipe).__name__}")
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


# ----------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------


def updates_per_epoch(recipe: dict[str, Any]) -> int:
    """Optimizer updates per epoch (1 for iteration schedules): ceil(train_size / global batch)."""
    if "iterations" in recipe["schedule"]:
        return 1
    return math.ceil(recipe["data"]["train_size"] / recipe["data"]["batch_size"])


def build_optimizer(model: nn.Module, recipe: dict[str, Any]) -> torch.optim.Optimizer:
    """timm create_optimizer_v2 (no decay on 1-D params and model.no_weight_decay(); frozen ones skipped)."""
    from timm.optim import create_optimizer_v2

    opt = dict(recipe["optimizer"])
    opt.pop("clip_grad", None)
    kwargs: dict[str, Any] = {}
    if "betas" in opt:
        kwargs["betas"] = tuple(opt.pop("betas"))
    if "eps" in opt:
        kwargs["eps"] = float(opt.pop("eps"))
    return create_optimizer_v2(
        model, opt=opt.get("opt", "adamw"), lr=float(opt["lr"]),
        weight_decay=float(opt.get("weight_decay", 0.0)),
        **kwargs,
    )  # fmt: skip


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: dict[str, Any], upe: int | None = None) -> Any:
    """timm create_scheduler_v2, stepped per optimizer update (`sched.step_update(num_updates)`).

    Note timm's multistep decays one update before each milestone (it tests t + 1), mmdet at it.
    """
    from timm.scheduler import create_scheduler_v2

    s = recipe["schedule"]
    upe = upe or updates_per_epoch(recipe)
    lr = float(recipe["optimizer"]["lr"])
    length = s["iterations"] if "iterations" in s else s["epochs"]
    warmup = s.get("warmup_epochs", 0) + s.get("warmup_iters", 0) / upe
    prefix = bool(s.get("warmup_prefix", False))
    if prefix:  # Swin/VMamba: the cosine runs over the epochs after the warm-up, the total stays `epochs`
        length = length - warmup
    warmup_lr = s["warmup_lr"] if "warmup_lr" in s else lr * s.get("warmup_ratio", 0.0)
    sched, _ = create_scheduler_v2(
        optimizer,
        sched=s.get("sched", "cosine"),
        num_epochs=length,
        warmup_epochs=warmup,
        warmup_lr=float(warmup_lr),
        warmup_prefix=prefix,
        min_lr=float(s.get("min_lr", 0.0)),
        decay_milestones=list(s.get("decay_milestones", (90, 180, 270))),
        decay_rate=float(s.get("decay_rate", 0.1)),
        step_on_epochs=False,
        updates_per_epoch=upe,
    )
    return sched


def schedule_lr(recipe: dict[str, Any], update: int) -> float:
    """The learning rate the recipe's schedule gives at optimizer update `update` (full-size run)."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=float(recipe["optimizer"]["lr"]))
    sched = build_scheduler(opt, recipe)
    sched.step_update(num_updates=update)
    return opt.param_groups[0]["lr"]


def _tiny_name(name: str) -> str:
    return "test_mamba_adaptor" if name.startswith("mamba_adaptor") else "test_vmamba"


def build_model(
    recipe: dict[str, Any], name: str | None = None, tiny: bool = False, img_size: int | None = None
) -> nn.Module:
    """The recipe's model (optionally another backbone name; tiny shrinks the heads for dry runs, and
    img_size replaces the detector's resize target)."""
    from .pyramid import ensure_registered

    ensure_registered()
    m = recipe["model"]
    name = name or m["name"]
    kwargs = dict(m.get("kwargs") or {})
    peft = recipe.get("peft") or {}
    adaptor = peft.get("adaptor")
    freeze = peft.get("freeze_base", True)
    checkpoint = None if tiny else m.get("checkpoint")
    classes = recipe["data"]["num_classes"]
    task = recipe["task"]
    if task == "classification":
        import timm

        from adaptor_peft.adaptors import inject_adaptors
        from adaptor_peft.models import create_model

        if checkpoint is not None:
            model = create_model(name, checkpoint=checkpoint, num_classes=classes, **kwargs)
        else:
            model = timm.create_model(name, num_classes=classes, **kwargs)
        if adaptor is not None:
            from .pyramid import as_adaptor_config

            inject_adaptors(model, as_adaptor_config(adaptor), freeze_base=freeze)
        return model
    if task == "segmentation":
        from .segmentation import segmentation_model

        return segmentation_model(
            name, classes, checkpoint=checkpoint, adaptor=adaptor, freeze_base=freeze,
            decoder_channels=32 if tiny else m.get("decoder_channels", 512), **kwargs,
        )  # fmt: skip
    from .detection import detection_model

    data = recipe["data"]
    size = data.get("min_size", data["img_size"])
    max_size = data.get("max_size", 1333)
    if img_size is not None:  # scale the short-side choices (3x multi-scale) and the long-side cap alike
        ratio = img_size / data["img_size"]
        size = [max(1, round(s * ratio)) for s in size] if isinstance(size, list) else img_size
        max_size = max(img_size, round(max_size * ratio))
    extra = (
        dict(rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, box_batch_size_per_image=32)
        if tiny
        else {}
    )
    return detection_model(
        name, classes, checkpoint=checkpoint, adaptor=adaptor, freeze_base=freeze,
        fpn_channels=32 if tiny else m.get("fpn_channels", 256),
        min_size=size, max_size=max_size,
        backbone_kwargs=kwargs, **extra,
    )  # fmt: skip


def build_classification_transform(recipe: dict[str, Any], img_size: int | None = None) -> Any:
    """timm create_transform training pipeline with the recipe's RandAugment / erasing / jitter settings."""
    from adaptor_peft.train.augment import create_train_transform

    a, d = recipe.get("augment") or {}, recipe["data"]
    kwargs = dict(
        input_size=img_size or d["img_size"], auto_augment=a.get("auto_augment"),
        re_prob=a.get("re_prob", 0.0), re_mode=a.get("re_mode", "pixel"), re_count=a.get("re_count", 1),
        color_jitter=a.get("color_jitter", 0.4), hflip=a.get("hflip", 0.5),
        interpolation=a.get("interpolation", d.get("interpolation", "bicubic")),
    )  # fmt: skip
    for key in ("scale", "ratio"):
        if key in a:
            kwargs[key] = tuple(a[key])
    if "mean" in d:
        kwargs["mean"], kwargs["std"] = tuple(d["mean"]), tuple(d["std"])
    return create_train_transform(**kwargs)


def build_mixup(recipe: dict[str, Any]) -> Any:
    """timm Mixup/CutMix (with label smoothing), or None when both alphas are 0."""
    from timm.data import Mixup

    a = recipe.get("augment") or {}
    if not (a.get("mixup", 0.0) > 0 or a.get("cutmix", 0.0) > 0):
        return None
    return Mixup(
        mixup_alpha=a.get("mixup", 0.0), cutmix_alpha=a.get("cutmix", 0.0), prob=a.get("mixup_prob", 1.0),
        switch_prob=a.get("switch_prob", 0.5), label_smoothing=a.get("label_smoothing", 0.0),
        num_classes=recipe["data"]["num_classes"],
    )  # fmt: skip


def build_segmentation_transform(recipe: dict[str, Any], img_size: int | None = None) -> Any:
    """torchvision v2 joint image+mask pipeline: random short-side resize (ratio_range x crop), crop with
    ignore-label padding, flip, photometric jitter (image only), normalize (mmseg's ADE20K pipeline)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    a, d = recipe.get("augment") or {}, recipe["data"]
    size = img_size or d["img_size"]
    lo, hi = a.get("ratio_range", (0.5, 2.0))
    ops: list[Any] = [
        v2.RandomResize(max(1, int(size * lo)), max(2, int(size * hi))),
        v2.RandomCrop(
            size, pad_if_needed=True, fill={tv_tensors.Mask: d.get("ignore_index", 255), "others": 0}
        ),
        v2.RandomHorizontalFlip(a.get("hflip", 0.5)),
    ]
    if a.get("photometric", True):
        ops.append(v2.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360))
    ops += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
    ops.append(v2.Normalize(d.get("mean", (0.485, 0.456, 0.406)), d.get("std", (0.229, 0.224, 0.225))))
    return v2.Compose(ops)


def build_ema(model: nn.Module, recipe: dict[str, Any]) -> Any:
    """timm ModelEmaV3 of the model, or None when the recipe has no `ema` section."""
    from timm.utils import ModelEmaV3

    e = recipe.get("ema")
    if not e:
        return None
    return ModelEmaV3(model, decay=float(e.get("decay", 0.9999)), use_warmup=bool(e.get("use_warmup", False)))


# ----------------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------------


@dataclass
class DryRunResult:
    """What a dry run did: per-step losses and learning rates, parameter counts."""

    recipe: str
    model: str
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    trainable: int = 0
    total: int = 0
    ema_moved: bool | None = None


def _synthetic_batch(recipe: dict[str, Any], batch: int, size: int, gen: torch.Generator) -> Any:
    from PIL import Image

    task, classes = recipe["task"], recipe["data"]["num_classes"]

    def pil(h: int, w: int) -> Image.Image:
        return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())

    if task == "classification":
        tf = build_classification_transform(recipe, size)
        images = torch.stack([tf(pil(size + size // 4, size + size // 2)) for _ in range(batch)])
        return images, torch.randint(0, classes, (batch,), generator=gen)
    if task == "segmentation":
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        tf = build_segmentation_transform(recipe, size)
        images, masks = [], []
        for _ in range(batch):
            mask = torch.randint(0, classes, (1, size + size // 2, 2 * size), generator=gen)
            mask[:, :4] = recipe["data"].get("ignore_index", 255)
            image = tv_tensors.Image(TF.pil_to_tensor(pil(size + size // 2, 2 * size)))
            x, m = tf(image, tv_tensors.Mask(mask))
            images.append(x)
            masks.append(m[0].long())
        return torch.stack(images), torch.stack(masks)
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    hflip = (recipe.get("augment") or {}).get("hflip", 0.5)
    to_float = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
    flip = v2.Compose([v2.RandomHorizontalFlip(hflip), to_float])
    images, targets = [], []
    for k in range(batch):
        h, w = size, size + 16 * k
        boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [20.0, 10.0, 60.0, 50.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        target = dict(
            boxes=tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            masks=tv_tensors.Mask(masks), labels=torch.randint(1, classes, (2,), generator=gen),
        )  # fmt: skip
        image, target = flip(image, target)
        images.append(image.as_subclass(torch.Tensor))
        targets.append({k2: v.as_subclass(torch.Tensor) for k2, v in target.items()})
    return images, targets


def compute_loss(
    recipe: dict[str, Any], model: nn.Module, inputs: Any, targets: Any, mixup: Any = None
) -> torch.Tensor:
    """The task's training loss: (mixed) soft-target CE, CE with ignore_index, or Mask R-CNN's loss sum."""
    import torch.nn.functional as F

    task = recipe["task"]
    if task == "classification":
        if mixup is not None:
            inputs, soft = mixup(inputs, targets)
            return torch.sum(-soft * F.log_softmax(model(inputs), -1), -1).mean()
        smoothing = (recipe.get("augment") or {}).get("label_smoothing", 0.0)
        return F.cross_entropy(model(inputs), targets, label_smoothing=smoothing)
    if task == "segmentation":
        return F.cross_entropy(model(inputs), targets, ignore_index=recipe["data"].get("ignore_index", 255))
    return sum(model(inputs, targets).values())


def dry_run(
    recipe: str | os.PathLike | dict[str, Any],
    steps: int = 2,
    img_size: int = 64,
    batch_size: int = 2,
    variant: str | None = None,
    model_name: str | None = None,
    seed: int = 0,
) -> DryRunResult:
    """A few optimizer steps of the recipe on synthetic data with the tiny model of the same family.

    Resolution and batch are overridden small; the optimizer, its LR, the schedule as a function of the
    update number (the full run's updates per epoch), augmentations, Mixup/CutMix, label smoothing, EMA,
    gradient clipping and PEFT freezing are the recipe's own.
    """
    r = load_large_recipe(recipe, variant)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    name = model_name or _tiny_name(r["model"]["name"])
    model = build_model(r, name, tiny=True, img_size=img_size).train()
    optimizer = build_optimizer(model, r)
    sched = build_scheduler(optimizer, r)
    mixup = build_mixup(r) if r["task"] == "classification" else None
    ema = build_ema(model, r)
    clip = (r["optimizer"] or {}).get("clip_grad")
    out = DryRunResult(r["name"], name)
    out.total = sum(p.numel() for p in model.parameters())
    out.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ema_before = None if ema is None else [p.detach().clone() for p in ema.module.parameters()]
    for step in range(steps):
        inputs, targets = _synthetic_batch(r, batch_size, img_size, gen)
        loss = compute_loss(r, model, inputs, targets, mixup)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"dry run of {r['name']}: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], float(clip))
        out.lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step_update(num_updates=step + 1)
        if ema is not None:
            ema.update(model, step=step)
        out.losses.append(loss.item())
    if ema is not None:
        out.ema_moved = any(
            not torch.equal(a, b) for a, b in zip(ema_before, ema.module.parameters(), strict=True)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m adaptor_peft.dense.recipe_dryrun RECIPE [--variant V]`: print what a dry run did."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m adaptor_peft.dense.recipe_dryrun", description=main.__doc__
    )
    parser.add_argument("recipe")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    result = dry_run(args.recipe, args.steps, args.img_size, args.batch_size, args.variant)
    print(
        f"{result.recipe}: model {result.model} "
        f"({result.trainable:,} of {result.total:,} parameters trained)\n"
        f"losses {[round(v, 4) for v in result.losses]}\nlrs {result.lrs}\nema moved: {result.ema_moved}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
