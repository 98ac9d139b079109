"""The training loop on ``accelerate.Accelerator``: one script for 1 CPU, 1 GPU, DDP and FSDP.

Launch: ``adaptor-peft train RECIPE`` (1 process), ``accelerate launch --multi_gpu --num_processes N
-m adaptor_peft.cli train RECIPE`` (DDP), or on CPUs ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N
-m adaptor_peft.cli train RECIPE`` (gloo). ``batch_size`` is per process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..atomic import atomic_write_text
from ..booster import booster_param_groups
from .checkpointing import (
    CKPT_DIR,
    find_resumable,
    load_checkpoint_state,
    save_checkpoint,
    sweep_temp_files,
)
from .data import (
    DataError,
    EpochSampler,
    ImageSource,
    Preprocess,
    SubsetSource,
    TransformedDataset,
    open_source,
    split_holdout,
    stratified_subset,
)
from .methods import get_method, head_param_names
from .metrics import ClassificationMeter
from .recipes import Recipe, RecipeError, load_recipe, resolve_path
from .tracking import JsonlLog, plot_curves

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
PLOT_FILE = "curves.png"
RECIPE_FILE = "recipe.yaml"
RESULT_FILE = "result.json"  # written last: its presence marks a finished run
_OUTPUTS = (METRICS_FILE, EVAL_FILE, PLOT_FILE, RECIPE_FILE, RESULT_FILE, "final_eval.json", CKPT_DIR)
#: Test-only hooks, off unless set (kill-and-resume tests kill at announced steps, not after sleeps):
#: STEP_FILE_ENV names a file to which the main process appends each completed optimizer step (after
#: that step's evaluation and checkpoint), flushed; with STEP_STOP_ENV=1 it then stops itself (SIGSTOP)
#: until the test sends SIGCONT or SIGKILL, so it cannot run past a step the test has not seen.
STEP_FILE_ENV = "ADAPTOR_PEFT_TEST_STEP_FILE"
STEP_STOP_ENV = "ADAPTOR_PEFT_TEST_STEP_STOP"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the message names the optimizer step."""


class RunDirError(FileExistsError):
    """The output directory holds a run that would be overwritten."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    final_eval: dict[str, Any] | None
    initial_eval: dict[str, Any] | None
    artefact: Path
    plot: Path | None
    trainable_params: int
    total_params: int
    wall_time_s: float
    extras: dict[str, Any] = field(default_factory=dict)


# --- building blocks ------------------------------------------------------------------------------


def is_checkpoint_model(name: Any) -> bool:
    """True when a recipe's `model` names a self-describing checkpoint file (config in its metadata)."""
    return isinstance(name, str) and (name.startswith("asset:") or name.endswith(".safetensors"))


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    """Create the base model (VMamba name/config or any timm model) with the recipe's checkpoint."""
    checkpoint = resolve_path(recipe.checkpoint)
    if checkpoint is not None and not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint} (recipe key 'checkpoint')")
    try:
        from adaptor_peft.models import create_model
    except ImportError:  # the model package not importable: plain timm (no checkpoint support)
        create_model = None
    kwargs = dict(recipe.model_kwargs)
    name = recipe.model
    if is_checkpoint_model(name):
        name = str(resolve_path(name))
    if create_model is not None and (not isinstance(name, str) or not _is_foreign_timm_name(name)):
        model = create_model(name, checkpoint=checkpoint, num_classes=num_classes, **kwargs)
    else:
        import timm

        if checkpoint is not None:
            raise RecipeError(f"model '{name}' is a plain timm model: 'checkpoint' is not supported for it")
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    if recipe.reset_head:
        model.reset_classifier(num_classes)
    return model


def _is_foreign_timm_name(name: str) -> bool:
    """A timm model name that is not one of ours (trainer tests and baselines may use any timm model)."""
    import timm

    from adaptor_peft.models import list_models

    return name not in list_models() and timm.is_model(name)


def build_sources(recipe: Recipe) -> tuple[ImageSource, ImageSource | None]:
    """Training and evaluation sources (train_limit subset, val_fraction hold-out)."""
    if recipe.train_data is None:
        raise RecipeError("recipe key 'train_data' is not set (a .npz, ImageFolder dir or datasets dir)")
    train = open_source(resolve_path(recipe.train_data), recipe.train_split, recipe.bad_images)
    evals = None
    if recipe.eval_data is not None:
        evals = open_source(resolve_path(recipe.eval_data), recipe.eval_split or "test", recipe.bad_images)
    elif recipe.val_fraction > 0:
        keep, hold = split_holdout(train.labels, recipe.val_fraction, recipe.seed)
        train, evals = SubsetSource(train, keep), SubsetSource(train, hold)
    if recipe.train_limit is not None and recipe.train_limit < len(train):
        train = SubsetSource(train, stratified_subset(train.labels, recipe.train_limit, recipe.seed))
    return train, evals


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases, 1-D tensors and no_weight_decay names; per-part lrs."""
    if recipe.layer_decay is not None:  # booster with layer-wise base rates (timm group_matcher depth)
        return booster_param_groups(
            model,
            base_lr=recipe.base_lr,
            adaptor_lr=recipe.lr,
            weight_decay=recipe.weight_decay,
            head_lr=recipe.head_lr if recipe.head_lr is not None else recipe.lr,
            layer_decay=recipe.layer_decay,
        )
    skip = set()
    if hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    head = head_param_names(model)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = (
            p.ndim <= 1
            or name.endswith(".bias")
            or name in skip
            or any(name.endswith(f".{s}") or name == s for s in skip)
            or getattr(p, "_no_weight_decay", False)
        )
        part = "head" if name in head else ("adaptor" if ".adaptor_" in f".{name}" else "base")
        groups.setdefault((part, not no_decay), []).append(p)
    lrs = {
        "head": recipe.head_lr if recipe.head_lr is not None else recipe.lr,
        "adaptor": recipe.lr,
        "base": recipe.base_lr if recipe.base_lr is not None else recipe.lr,
    }
    return [
        {
            "params": ps,
            "lr": lrs[part],
            "weight_decay": recipe.weight_decay if decay else 0.0,
            "name": f"{part}",
        }
        for (part, decay), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):  # noqa: ANN201
    """LambdaLR factor: linear warm-up from 1/(warmup+1) to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _trainable_report(model: nn.Module) -> Any:
    try:
        from adaptor_peft.adaptors import trainable_report
    except ImportError:
        return None
    try:
        return trainable_report(model)
    except Exception:  # models without a recognisable head: counts are still in TrainResult
        return None


def _fresh_accelerator(recipe: Recipe) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Recipes may differ in precision within one process (tests, quickstart + probe): drop the
    # accelerator singleton, but keep the process group (PartialState) of a distributed launch.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        cpu=recipe.cpu,
        mixed_precision=recipe.mixed_precision,
        gradient_accumulation_steps=recipe.grad_accum,
    )


def prepare_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to clobber a previous run unless ``overwrite`` (or ``resume`` an unfinished one)."""
    if not run_dir.exists():
        return
    finished = (run_dir / RESULT_FILE).exists()
    started = any((run_dir / name).exists() for name in _OUTPUTS)
    if recipe.overwrite:
        for name in _OUTPUTS + (get_method(recipe.method).artefact,):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    if finished:
        raise RunDirError(f"{run_dir} already holds a finished run; pass overwrite=true to replace it")
    if started and not recipe.resume:
        raise RunDirError(
            f"{run_dir} holds an unfinished run; pass resume=true to continue it or overwrite=true to restart"
        )


def _model_info_meta(recipe: Recipe, classes: list[str]) -> dict[str, Any]:
    return {
        "classes": list(classes),
        "img_size": recipe.img_size,
        "resize": recipe.resize,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "method": recipe.method,
        "recipe": recipe.to_dict(),
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Any, num_classes: int) -> dict[str, Any]:
    """Top-1/top-5/per-class accuracy, loss and confusion matrix over a prepared loader (all processes)."""
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(num_classes)
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        logits, labels, loss = accelerator.gather_for_metrics((logits.float(), labels, loss))
        meter.update(logits, labels, float(loss.sum()))
    model.train(was_training)
    return meter.compute()


def _announce_step(path: str, step: int, stop: bool) -> None:
    """Test hook (STEP_FILE_ENV): append ``step`` to ``path``; with ``stop``, SIGSTOP this process."""
    with open(path, "a") as f:
        f.write(f"{step}\n")
    if stop:
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)


class _Window:
    """Running sums between two logging steps (saved in checkpoints, so resumed logs are exact)."""

    def __init__(self, state: dict | None = None) -> None:
        s = state or {}
        self.loss, self.correct, self.count = s.get("loss", 0.0), s.get("correct", 0.0), s.get("count", 0)

    def add(self, loss_sum: float, correct: float, count: int) -> None:
        self.loss += loss_sum
        self.correct += correct
        self.count += count

    def state(self) -> dict[str, Any]:
        return {"loss": self.loss, "correct": self.correct, "count": self.count}


# --- the loop -------------------------------------------------------------------------------------


def train(
    recipe: Recipe | str | os.PathLike | dict | None = None, overrides: list[str] | dict | None = None
) -> TrainResult:
    """Run one training job described by a recipe (path, dict or Recipe) plus ``key=value`` overrides."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        recipe = load_recipe(recipe.to_dict(), overrides)
    t_start = time.time()
    accelerator = _fresh_accelerator(recipe)
    main = accelerator.is_main_process
    step_file = os.environ.get(STEP_FILE_ENV) if main else None  # test hook, see STEP_FILE_ENV
    stop_at_steps = os.environ.get(STEP_STOP_ENV) == "1"
    run_dir = Path(recipe.output_dir)
    if main:
        prepare_run_dir(run_dir, recipe)
        run_dir.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(run_dir)  # leftovers of a killed save (no save is in flight now)
    accelerator.wait_for_everyone()

    from accelerate.utils import set_seed

    set_seed(recipe.seed, deterministic=False)
    if accelerator.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    # Data
    train_src, eval_src = build_sources(recipe)
    num_classes = recipe.num_classes or len(train_src.classes)
    train_src.check_labels(num_classes)
    if eval_src is not None:
        eval_src.check_labels(num_classes)
    train_ds = TransformedDataset(train_src, Preprocess(recipe, train=True), seed=recipe.seed)
    samples_per_step = recipe.batch_size * recipe.grad_accum * accelerator.num_processes
    sampler = EpochSampler(len(train_ds), samples_per_step, recipe.seed)
    train_dl = DataLoader(
        train_ds, batch_size=recipe.batch_size, sampler=sampler, num_workers=recipe.num_workers
    )
    eval_dl = None
    if eval_src is not None:
        eval_ds = TransformedDataset(eval_src, Preprocess(recipe, train=False))
        eval_dl = DataLoader(
            eval_ds,
            batch_size=recipe.eval_batch_size or recipe.batch_size,
            shuffle=False,
            num_workers=recipe.num_workers,
        )
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * steps_per_epoch))

    # Model, method, optimizer, schedule
    method = get_method(recipe.method)
    model = method.prepare(build_model(recipe, num_classes), recipe)
    report = _trainable_report(model)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    if n_trainable == 0:
        raise RecipeError(f"method '{recipe.method}' left no trainable parameters")
    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=tuple(recipe.betas))
    warmup = recipe.warmup_steps or int(round(recipe.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup, recipe.min_lr_ratio)
    )
    # The scheduler is stepped by hand once per optimizer step: accelerate's prepared scheduler would
    # step num_processes times per step, which changes the schedule with the process count.
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)
    unwrapped = accelerator.unwrap_model(model)

    metrics_log, eval_log = JsonlLog(run_dir / METRICS_FILE), JsonlLog(run_dir / EVAL_FILE)
    step, window, initial_eval, time_offset = 0, _Window(), None, 0.0
    if recipe.resume:
        folder, warnings = find_resumable(run_dir, accelerator.num_processes)
        for w in warnings:
            accelerator.print(f"warning: {w}")
        if folder is not None:
            saved = load_checkpoint_state(accelerator, folder, unwrapped, optimizer, scheduler)
            step, window = int(saved["step"]), _Window(saved.get("window"))
            initial_eval = saved.get("initial_eval")
            time_offset = float(saved.get("elapsed_s", 0.0))
            if main:
                metrics_log.truncate_after(step)
                # a run resumed at its last step re-runs the final evaluation: drop the old row
                eval_log.truncate_after(step - 1 if step >= total_steps else step)
            accelerator.print(f"resumed from {folder} at step {step}/{total_steps}")
    if main:
        recipe.save(run_dir / RECIPE_FILE)
        if step == 0:
            for log in (metrics_log, eval_log):
                if log.path.exists():
                    log.path.unlink()
    accelerator.wait_for_everyone()

    meta = _model_info_meta(
        recipe, train_src.classes[:num_classes] + [str(i) for i in range(len(train_src.classes), num_classes)]
    )

    def run_eval(at_step: int) -> dict[str, Any] | None:
        if eval_dl is None:
            return None
        result = evaluate(model, eval_dl, accelerator, num_classes)
        if main:
            eval_log.append(
                {
                    "step": at_step,
                    "top1": result["top1"],
                    "top5": result["top5"],
                    "loss": result["loss"],
                    "per_class": result["per_class"],
                }
            )
        return result

    if step == 0 and recipe.eval_at_start:
        initial_eval = run_eval(0)

    def checkpoint(at_step: int) -> None:
        tensors = {
            n: p.detach().to("cpu", copy=True).contiguous()
            for n, p in unwrapped.named_parameters()
            if p.requires_grad
        }
        tensors.update(
            {
                n: b.detach().to("cpu", copy=True).contiguous()
                for n, b in unwrapped.named_buffers()
                if n in unwrapped.state_dict()
            }
        )
        state = {
            "window": window.state(),
            "initial_eval": initial_eval,
            "epoch": at_step // steps_per_epoch,
            "elapsed_s": time.time() - t_start + time_offset,
        }
        save_checkpoint(
            accelerator, run_dir, at_step, tensors, optimizer, scheduler, state, recipe.keep_checkpoints
        )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (main and recipe.progress),
        desc="train",
        dynamic_ncols=True,
    )
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    clip = recipe.clip_grad if recipe.clip_grad is not None else float("inf")
    last_eval: dict[str, Any] | None = None
    t_window = time.time()
    model.train()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        # The epoch is the trainer's state: accelerate's loader calls set_epoch(its own iteration
        # counter, 0 after a restart) on the sampler and dataset when iterated, so set that counter first.
        train_dl.set_epoch(epoch)
        sampler.set_position(epoch, start)
        train_ds.set_epoch(epoch)
        for images, labels in train_dl:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
                bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=loss.device)
                if accelerator.num_processes > 1:
                    bad = accelerator.reduce(bad, "sum")
                if bad.item() > 0:
                    raise NonFiniteLossError(
                        f"non-finite training loss ({loss.item()}) at optimizer step {step + 1}; "
                        f"the last complete checkpoint in {run_dir / CKPT_DIR} is kept"
                    )
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable_params, clip)
                    # NaN/Inf gradients with a finite loss: stop before the step poisons the weights
                    # (under fp16 the grad scaler skips such steps itself)
                    if accelerator.scaler is None and not torch.isfinite(torch.as_tensor(grad_norm)):
                        raise NonFiniteLossError(
                            f"non-finite gradient norm ({float(grad_norm)}) at optimizer step {step + 1}; "
                            f"the last complete checkpoint in {run_dir / CKPT_DIR} is kept"
                        )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            correct = float((logits.detach().argmax(1) == labels).sum())
            window.add(float(loss.detach()) * labels.numel(), correct, labels.numel())
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % recipe.log_every == 0 or step == total_steps:
                sums = torch.tensor(
                    [window.loss, window.correct, float(window.count)],
                    dtype=torch.float64,
                    device=accelerator.device,
                )
                sums = accelerator.reduce(sums, "sum") if accelerator.num_processes > 1 else sums
                elapsed = time.time() - t_window
                row = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": float(sums[0] / sums[2]),
                    "acc": float(100.0 * sums[1] / sums[2]),
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "samples": int(sums[2]),
                    "samples_per_s": round(float(sums[2]) / max(elapsed, 1e-9), 2),
                    "time_s": round(time.time() - t_start + time_offset, 3),
                }
                if main:
                    metrics_log.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                window, t_window = _Window(), time.time()
            if recipe.eval_every and step % recipe.eval_every == 0 and step != total_steps:
                last_eval = run_eval(step)
            if recipe.save_every and step % recipe.save_every == 0 and step != total_steps:
                checkpoint(step)
            if step_file:
                _announce_step(step_file, step, stop_at_steps)
            if step >= total_steps:
                break
    bar.close()

    final_eval = run_eval(step) if eval_dl is not None else last_eval
    checkpoint(step)
    artefact = run_dir / method.artefact
    plot_path = None
    if main:
        meta["steps"] = step
        if final_eval is not None:
            meta["final_top1"] = final_eval["top1"]
        method.save(unwrapped, artefact, meta)
        if final_eval is not None:
            atomic_write_text(run_dir / "final_eval.json", json.dumps(final_eval, indent=1))
        if recipe.plot:
            plot_path = plot_curves(
                metrics_log.rows(), eval_log.rows(), run_dir / PLOT_FILE, title=recipe.name or ""
            )
    accelerator.wait_for_everyone()
    wall = time.time() - t_start
    result = TrainResult(
        run_dir=run_dir,
        steps=step,
        final_eval=final_eval,
        initial_eval=initial_eval,
        artefact=artefact,
        plot=plot_path if plot_path is not None else (run_dir / PLOT_FILE if recipe.plot else None),
        trainable_params=n_trainable,
        total_params=n_total,
        wall_time_s=wall,
        extras={"trainable_report": report},
    )
    if main:
        summary = {
            "steps": step,
            "top1": final_eval["top1"] if final_eval else None,
            "top5": final_eval["top5"] if final_eval else None,
            "initial_top1": initial_eval["top1"] if initial_eval else None,
            "trainable_params": n_trainable,
            "total_params": n_total,
            "artefact": artefact.name,
            "artefact_bytes": artefact.stat().st_size,
            "wall_time_s": round(wall, 2),
            "num_processes": accelerator.num_processes,
            "method": recipe.method,
            "num_classes": num_classes,
            "classes": meta["classes"],
        }
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return result


def final_tensors(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Trainable tensors of the newest complete checkpoint of a run (for comparisons and tests)."""
    from safetensors.torch import load_file

    folder, _ = find_resumable(Path(run_dir))
    if folder is None:
        raise DataError(f"{run_dir}: no complete checkpoint")
    return load_file(str(folder / "trainable.safetensors"))
