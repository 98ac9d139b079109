"""Run a large-scale recipe (ImageNet, ADE20K UperNet, COCO Mask R-CNN) with Accelerate, or dry-run it.

    accelerate launch --config_file recipes/accelerate/multi_gpu_ddp.yaml -m adaptor_peft.dense.run \\
        recipes/ade20k_upernet.yaml [--variant b1] [--set data.train=/data/ADE data.val=/data/ADE]
    python -m adaptor_peft.dense.run recipes/ade20k_upernet.yaml --dry-run [--steps 2]

The same script runs on one CPU (`python -m adaptor_peft.dense.run ...`), one GPU or many (DDP). The
recipe's `data.batch_size` is global and split over the processes. Outputs in `output_dir`:
metrics.jsonl (loss / lr per log step, evaluation results), model.safetensors (+ model_ema.safetensors),
recipe.yaml (the resolved recipe). All writes are atomic. A minimal runner: no resume, evaluation at the
end (and every `eval.interval` updates for dense tasks) on the main process.

The updates run on the trainer's loop (`adaptor_peft.train.trainer.train_updates`, what classification
training runs on) with this recipe's task (`DenseTask`: the model's loss, Mixup included), timm's
schedule stepped per update and EMA in the update hook; the recipe is loaded by the trainer's loader
(`train.recipes.load_sectioned_recipe`, schema in `dense.recipe`).

A dry run is a mode of the same runner: a few updates on the CPU, with the tiny model of the recipe's
family and synthetic batches at a small resolution, writing nothing: the optimizer, its LR and decay
groups, the schedule as a function of the update (the full run's updates per epoch), augmentations,
Mixup/CutMix, label smoothing, EMA, gradient clipping and PEFT freezing are the recipe's own, so a
recipe cannot rot.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch.utils.data import DataLoader

from ..atomic import atomic_write_bytes, atomic_write_text
from ..train.run_lock import RunDirError, RunDirLock, RunDirLockedError
from ..train.trainer import fresh_accelerator, train_updates
from .builders import (
    build_classification_transform,
    build_ema,
    build_mixup,
    build_model,
    build_optimizer,
    build_scheduler,
    build_segmentation_transform,
    compute_loss,
    tiny_model_name,
    updates_per_epoch,
)
from .data import synthetic_batch
from .recipe import LargeRecipeError, load_large_recipe

if TYPE_CHECKING:
    from accelerate import Accelerator
    from timm.data import Mixup
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

__all__ = ["DryRunResult", "dry_run", "run"]


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


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(tensors))


def _loaders(
    r: dict[str, Any], per_process: int, img_size: int | None
) -> tuple[DataLoader, DataLoader | None]:
    d, task = r["data"], r["task"]
    workers = int(d.get("num_workers", 0))
    if task == "classification":
        from timm.data import create_dataset, create_transform

        train = create_dataset("", root=d["train"], split="train", is_training=True)
        train.transform = build_classification_transform(r, img_size)
        val = None
        if d.get("val"):
            val = create_dataset("", root=d["val"], split="validation")
            val.transform = create_transform(
                img_size or d["img_size"],
                crop_pct=d.get("crop_pct"),
                interpolation=d.get("interpolation", "bicubic"),
                mean=tuple(d.get("mean", (0.485, 0.456, 0.406))),
                std=tuple(d.get("std", (0.229, 0.224, 0.225))),
            )
        collate = None
    elif task == "segmentation":
        from torchvision.transforms import v2

        from .data import ADE20KDataset

        kw = dict(reduce_zero_label=d.get("reduce_zero_label", True), ignore_index=d.get("ignore_index", 255))
        train = ADE20KDataset(d["train"], "training", build_segmentation_transform(r, img_size), **kw)
        norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(d["mean"], d["std"])])
        val = (
            ADE20KDataset(d["val"], "validation", lambda im, m: (norm(im), m), **kw) if d.get("val") else None
        )
        collate = None
    else:
        from .data import CocoInstances, detection_collate

        train = CocoInstances(d["train"], d["ann_train"], hflip=(r.get("augment") or {}).get("hflip", 0.5))
        val = CocoInstances(d["val"], d["ann_val"]) if d.get("val") and d.get("ann_val") else None
        collate = detection_collate
    loader = DataLoader(
        train, per_process, shuffle=True, drop_last=True, num_workers=workers, collate_fn=collate
    )
    val_loader = None
    if val is not None:
        batch = 1 if task == "segmentation" else per_process
        val_loader = DataLoader(val, batch, shuffle=False, num_workers=workers, collate_fn=collate)
    return loader, val_loader


@torch.no_grad()
def _evaluate(
    r: dict[str, Any], model: torch.nn.Module, val_loader: DataLoader, device: torch.device
) -> dict[str, Any]:
    task = r["task"]
    if task == "classification":
        model.eval()
        correct = total = 0
        for images, labels in val_loader:
            pred = model(images.to(device)).argmax(-1).cpu()
            correct += int((pred == labels).sum())
            total += len(labels)
        model.train()
        return {"top1": 100.0 * correct / max(total, 1)}
    if task == "segmentation":
        from .segmentation import evaluate_segmentation

        classes, ev = r["data"]["num_classes"], r.get("eval") or {}
        ignore = r["data"].get("ignore_index", 255)
        ss = evaluate_segmentation(model, val_loader, classes, (1.0,), False, ignore, device)
        out = {"mIoU_ss": 100.0 * ss["mIoU"]}
        if ev.get("scales"):
            ms = evaluate_segmentation(
                model, val_loader, classes, ev["scales"], ev.get("flip", True), ignore, device
            )
            out["mIoU_ms"] = 100.0 * ms["mIoU"]
        return out
    from .detection import evaluate_coco

    ds = val_loader.dataset
    return evaluate_coco(model, val_loader, ds.coco, label_to_category=ds.label_to_category, device=device)


@dataclass
class DenseTask:
    """A large recipe's task for the trainer's update loop: the whole loss (Mixup included) under autocast."""

    recipe: dict[str, Any]
    mixup: Mixup | None = None

    def forward(self, model: torch.nn.Module, batch: tuple[Any, Any]) -> torch.Tensor:
        """The task's training loss (soft-target/smoothed CE, CE with ignore_index, or Mask R-CNN's sum)."""
        return compute_loss(self.recipe, model, batch[0], batch[1], self.mixup)

    def loss(self, outputs: torch.Tensor, batch: tuple[Any, Any]) -> torch.Tensor:
        """The forward pass already returned the loss."""
        return outputs


def _prepare(
    r: dict[str, Any], accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader | None = None
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader | None, Scheduler, ModelEmaV3 | None]:
    """What both modes build around the model: the recipe's optimizer (prepared with the model and the
    loader), its schedule per update (the loader's length per epoch; the full run's without one), EMA."""
    optimizer = build_optimizer(model, r)
    if loader is None:
        model, optimizer = accelerator.prepare(model, optimizer)
        upe = updates_per_epoch(r)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        upe = len(loader)
    sched = build_scheduler(optimizer, r, upe=upe)
    return model, optimizer, loader, sched, build_ema(accelerator.unwrap_model(model), r)


def _train_updates(
    r: dict[str, Any],
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sched: Scheduler,
    batches: Iterable[tuple[Any, Any]],
    total: int,
    ema: ModelEmaV3 | None,
    on_update: Callable[[int, float, float], None],
) -> None:
    """The trainer's update loop with the recipe's task, timm schedule (per update), EMA and clipping."""
    mixup = build_mixup(r) if r["task"] == "classification" else None
    clip = (r["optimizer"] or {}).get("clip_grad")

    def after_update(update: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        lr = optimizer.param_groups[0]["lr"]  # the rate this update used: the schedule moves on below
        sched.step_update(num_updates=update)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model), step=update - 1)
        on_update(update, loss.item(), lr)

    train_updates(
        accelerator,
        model,
        optimizer,
        DenseTask(r, mixup),
        batches,
        total,
        clip=float(clip) if clip else None,
        on_update=after_update,
        error_note=f" ({r['name']})",
    )


def run(
    recipe: str | os.PathLike | dict[str, Any],
    variant: str | None = None,
    overrides: list[str] | None = None,
    max_steps: int | None = None,
    img_size: int | None = None,
) -> dict[str, Any]:
    """Train (and evaluate) a recipe; returns the last log record and the final evaluation."""
    r = load_large_recipe(recipe, variant, overrides)
    use_cuda = torch.cuda.is_available()
    accelerator = fresh_accelerator(
        cpu=False, mixed_precision=r.get("mixed_precision", "no") if use_cuda else "no"
    )
    world = accelerator.num_processes
    batch = r["data"]["batch_size"]
    if batch % world:
        raise LargeRecipeError(f"data.batch_size={batch} does not split over {world} processes")
    out_dir = Path(r.get("output_dir") or f"runs/{r['name']}")
    lock = _lock_run_dir(accelerator, out_dir)
    try:
        return _run_locked(r, accelerator, out_dir, img_size, max_steps)
    finally:
        if lock is not None:
            lock.release()


def _lock_run_dir(accelerator: Accelerator, out_dir: Path) -> RunDirLock | None:
    """Main process: one writer per run directory (as classification runs); every rank raises its error."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = RunDirLock(out_dir).acquire()
        except RunDirError as exc:
            error = exc
        else:
            stale = lock.stale_message()
            if stale:
                accelerator.print(f"warning: {stale}")
    if accelerator.num_processes > 1:  # the other ranks fail with the main's error instead of waiting
        from accelerate.utils import broadcast_object_list

        shared = [None if error is None else str(error)]
        broadcast_object_list(shared, from_process=0)
        if shared[0] is not None and error is None:
            error = RunDirLockedError(shared[0])
    if error is not None:
        raise error
    return lock


def _run_locked(
    r: dict[str, Any], accelerator: Accelerator, out_dir: Path, img_size: int | None, max_steps: int | None
) -> dict[str, Any]:
    """The body of run(), with the run directory locked."""
    world = accelerator.num_processes
    batch = r["data"]["batch_size"]
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "recipe.yaml", yaml.safe_dump(r, sort_keys=False))
    torch.manual_seed(0)
    model = build_model(r, img_size=img_size)
    if r.get("grad_checkpointing"):
        for m in model.modules():  # VSSBlock recomputes itself in backward when the flag is set
            if isinstance(getattr(m, "grad_checkpointing", None), bool):
                m.grad_checkpointing = True
    loader, val_loader = _loaders(r, batch // world, img_size)
    model, optimizer, loader, sched, ema = _prepare(r, accelerator, model, loader)
    upe = len(loader)
    s = r["schedule"]
    total = int(s["iterations"]) if "iterations" in s else int(math.ceil(s["epochs"] * upe))
    if max_steps is not None:
        total = min(total, max_steps)
    interval = (r.get("eval") or {}).get("interval")
    log_path = out_dir / "metrics.jsonl"
    record: dict[str, Any] = {}

    def log_and_evaluate(update: int, loss: float, lr: float) -> None:
        record.update(update=update, loss=loss, lr=lr)
        if accelerator.is_main_process:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        dense_eval = r["task"] != "classification" and interval and update % int(interval) == 0
        if dense_eval and val_loader is not None and accelerator.is_main_process and update < total:
            scores = _evaluate(r, accelerator.unwrap_model(model), val_loader, accelerator.device)
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"update": update, "eval": scores}) + "\n")

    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    _train_updates(r, accelerator, model, optimizer, sched, batches, total, ema, log_and_evaluate)
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"last": record}
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        _save_weights(final, out_dir / "model.safetensors")
        if ema is not None:
            _save_weights(ema.module, out_dir / "model_ema.safetensors")
        if val_loader is not None:
            scores = _evaluate(r, ema.module if ema is not None else final, val_loader, accelerator.device)
            result["eval"] = scores
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"update": total, "eval": scores}) + "\n")
    return result


def dry_run(
    recipe: str | os.PathLike | dict[str, Any],
    steps: int = 2,
    img_size: int = 64,
    batch_size: int = 2,
    variant: str | None = None,
    model_name: str | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
) -> DryRunResult:
    """The runner's loop for a few updates on synthetic data with the tiny model of the same family."""
    r = load_large_recipe(recipe, variant, overrides)
    accelerator = fresh_accelerator(cpu=True, mixed_precision="no")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    name = model_name or tiny_model_name(r["model"]["name"])
    model = build_model(r, name, tiny=True, img_size=img_size)
    out = DryRunResult(r["name"], name)
    out.total = sum(p.numel() for p in model.parameters())
    out.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model, optimizer, _, sched, ema = _prepare(r, accelerator, model)
    ema_before = None if ema is None else [p.detach().clone() for p in ema.module.parameters()]

    def record(update: int, loss: float, lr: float) -> None:
        out.losses.append(loss)
        out.lrs.append(lr)

    batches = (synthetic_batch(r, batch_size, img_size, gen) for _ in itertools.count())
    _train_updates(r, accelerator, model, optimizer, sched, batches, steps, ema, record)
    if ema is not None:
        out.ema_moved = any(
            not torch.equal(a, b) for a, b in zip(ema_before, ema.module.parameters(), strict=True)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: RECIPE [--variant V] [--set key=value ...] [--max-steps N] [--img-size S] [--dry-run]."""
    parser = argparse.ArgumentParser(
        prog="python -m adaptor_peft.dense.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("recipe")
    parser.add_argument("--variant", default=None)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. data.train=/data/imagenet"
    )
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--img-size", type=int, default=None, help="dry run: 64 unless given")
    parser.add_argument(
        "--dry-run", action="store_true", help="a few updates of the tiny model on synthetic data"
    )
    parser.add_argument("--steps", type=int, default=2, help="dry run: optimizer updates")
    parser.add_argument("--batch-size", type=int, default=2, help="dry run: images per update")
    args = parser.parse_args(argv)
    if args.dry_run:
        result = dry_run(
            args.recipe, args.steps, args.img_size or 64, args.batch_size, args.variant, overrides=args.set
        )
        print(
            f"{result.recipe}: model {result.model} "
            f"({result.trainable:,} of {result.total:,} parameters trained)\n"
            f"losses {[round(v, 4) for v in result.losses]}\nlrs {result.lrs}\nema moved: {result.ema_moved}"
        )
        return 0
    print(json.dumps(run(args.recipe, args.variant, args.set, args.max_steps, args.img_size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
