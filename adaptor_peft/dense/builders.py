"""What each large-scale recipe names, built: the model (tiny for dry runs), timm optimizer, scheduler,
transforms, Mixup/CutMix and EMA, and each task's training loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:  # timm's submodules are imported by the builders that use them
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

__all__ = [
    "build_classification_transform",
    "build_ema",
    "build_mixup",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_segmentation_transform",
    "compute_loss",
    "schedule_lr",
    "tiny_model_name",
    "updates_per_epoch",
]


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: dict[str, Any], upe: int | None = None
) -> Scheduler:
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


def tiny_model_name(name: str) -> str:
    """The test-size model of the same family (what a dry run trains)."""
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


def build_mixup(recipe: dict[str, Any]) -> Mixup | None:
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


def build_ema(model: nn.Module, recipe: dict[str, Any]) -> ModelEmaV3 | None:
    """timm ModelEmaV3 of the model, or None when the recipe has no `ema` section."""
    from timm.utils import ModelEmaV3

    e = recipe.get("ema")
    if not e:
        return None
    return ModelEmaV3(model, decay=float(e.get("decay", 0.9999)), use_warmup=bool(e.get("use_warmup", False)))


def compute_loss(
    recipe: dict[str, Any], model: nn.Module, inputs: Any, targets: Any, mixup: Mixup | None = None
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
