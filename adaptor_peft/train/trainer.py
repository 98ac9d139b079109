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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from ..adaptors import TrainableReport, trainable_report
from ..atomic import atomic_write_text
from ..limits import MAX_RECIPE_BYTES
from ..regular_file import read_bounded
from .booster import booster_param_groups
from .build import TrainData, build_data, build_model, build_sources
from .checkpointing import (
    CKPT_DIR,
    find_resumable,
    load_checkpoint_state,
    save_checkpoint,
    sweep_temp_files,
)
from .data import DataError, ImageSource
from .methods import Method, get_method, head_param_names
from .metrics import ClassificationMeter
from .recipes import Recipe, RecipeError, load_recipe, load_yaml_bounded
from .run_lock import RunDirError, RunDirLock, RunDirLockedError
from .sharding import check_fsdp_active, full_model_state, full_optimizer_state, full_tensor, is_fsdp
from .tracking import JsonlLog, plot_curves

if TYPE_CHECKING:  # accelerate is imported when a run starts, not with this module
    from accelerate import Accelerator

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
PLOT_FILE = "curves.png"
RECIPE_FILE = "recipe.yaml"
RESULT_FILE = "result.json"  # written last: its presence marks a finished run
TRACKER_DIR = "tensorboard"  # accelerate's tracker (log_with: tensorboard) writes its events here
_OUTPUTS = (
    METRICS_FILE, EVAL_FILE, PLOT_FILE, RECIPE_FILE, RESULT_FILE, "final_eval.json", CKPT_DIR, TRACKER_DIR
)  # fmt: skip
#: eval_every: null evaluates about this many times per run (the last one at the final step)
EVAL_POINTS = 10
#: Test-only hooks, off unless set (kill-and-resume tests kill at announced steps, not after sleeps):
#: STEP_FILE_ENV names a file to which the main process appends each completed optimizer step (after
#: that step's evaluation and checkpoint), flushed; with STEP_STOP_ENV=1 it then stops itself (SIGSTOP)
#: until the test sends SIGCONT or SIGKILL, so it cannot run past a step the test has not seen.
STEP_FILE_ENV = "ADAPTOR_PEFT_TEST_STEP_FILE"
STEP_STOP_ENV = "ADAPTOR_PEFT_TEST_STEP_STOP"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the message names the optimizer step."""


class ResumeMismatchError(RunDirError):
    """A resume asks for a recipe that differs from the run's saved one in keys that must not change."""


#: Recipe keys a resume may change: they extend the run or only change how it reports itself.
RESUME_MAY_CHANGE = frozenset(
    {
        "max_steps", "epochs", "resume", "overwrite", "output_dir", "progress", "plot", "num_workers", "name",
        "log_with", "eval_limit",
        "check_images",  # only when unreadable images are found, not which images train
    }
)  # fmt: skip


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
        # Adaptor-T's gamma (plain or peft-named) gets its own group only when asked: unchanged
        # optimizer state layout otherwise (resume of older runs).
        if part == "adaptor" and recipe.gamma_lr is not None and _is_adaptor_t_gamma(name):
            part = "gamma"
        groups.setdefault((part, not no_decay), []).append(p)
    lrs = {
        "head": recipe.head_lr if recipe.head_lr is not None else recipe.lr,
        "adaptor": recipe.lr,
        "base": recipe.base_lr if recipe.base_lr is not None else recipe.lr,
        "gamma": recipe.gamma_lr,
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


def _is_adaptor_t_gamma(name: str) -> bool:
    """True for Adaptor-T's gamma, plain (``op.adaptor_t.gamma``) or peft-named (``...<adapter>.gamma``)."""
    return name.endswith(".gamma") and ".adaptor_t." in f".{name}"


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):  # noqa: ANN201
    """LambdaLR factor: linear warm-up from 1/(warmup+1) to 1, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _trainable_report(model: nn.Module) -> TrainableReport | None:
    try:
        return trainable_report(model)
    except Exception:  # models without a recognisable head: counts are still in TrainResult
        return None


def fresh_accelerator(
    cpu: bool,
    mixed_precision: str,
    gradient_accumulation_steps: int = 1,
    log_with: str | None = None,
    project_dir: str | os.PathLike | None = None,
) -> Accelerator:
    """An Accelerator with these settings, even when an earlier run in this process chose others.

    ``log_with``: an accelerate tracker name (its files go under ``project_dir``), or None.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Recipes may differ in precision within one process (tests, quickstart + probe): drop the
    # accelerator singleton, but keep the process group (PartialState) of a distributed launch.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_dir=None if project_dir is None else str(project_dir),
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
    if finished and recipe.resume:  # extend a finished run to a larger max_steps
        done = finished_steps(run_dir)
        if recipe.max_steps is None or recipe.max_steps <= done:
            raise RunDirError(
                f"{run_dir} already holds a finished run; pass overwrite=true to replace it (resume=true "
                f"extends it only to a max_steps larger than its {done} steps; got {recipe.max_steps})"
            )
        check_resume_recipe(run_dir / RECIPE_FILE, recipe)
        return
    if finished:
        raise RunDirError(f"{run_dir} already holds a finished run; pass overwrite=true to replace it")
    if started and not recipe.resume:
        raise RunDirError(
            f"{run_dir} holds an unfinished run; pass resume=true to continue it or overwrite=true to restart"
        )
    if recipe.resume:
        check_resume_recipe(run_dir / RECIPE_FILE, recipe)


def finished_steps(run_dir: Path) -> int:
    """Optimizer steps of the finished run in ``run_dir`` (its result.json)."""
    try:
        steps = json.loads((run_dir / RESULT_FILE).read_text()).get("steps")
    except (OSError, ValueError, AttributeError) as exc:
        raise RunDirError(
            f"{run_dir / RESULT_FILE}: unreadable ({type(exc).__name__}); pass overwrite=true"
        ) from None
    if type(steps) is not int:
        raise RunDirError(f"{run_dir / RESULT_FILE}: no integer 'steps'; pass overwrite=true")
    return steps


def check_resume_recipe(saved_path: Path, recipe: Recipe) -> None:
    """Raise ResumeMismatchError when ``recipe`` differs from the saved one outside RESUME_MAY_CHANGE."""
    import yaml

    if not saved_path.exists():
        return
    try:
        saved = load_yaml_bounded(read_bounded(saved_path, MAX_RECIPE_BYTES).decode(), str(saved_path))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ResumeMismatchError(
            f"{saved_path}: unreadable saved recipe ({type(exc).__name__}); restore it or pass overwrite=true"
        ) from None
    if not isinstance(saved, dict):
        raise ResumeMismatchError(
            f"{saved_path}: the saved recipe is not a mapping; restore it or pass overwrite=true"
        )
    new = recipe.to_dict()
    defaults = Recipe().to_dict()

    def same(a: Any, b: Any) -> bool:  # compared as YAML text: tuples == lists, nan == nan
        return yaml.safe_dump(a) == yaml.safe_dump(b)

    differ = [
        key
        for key, value in new.items()
        if key not in RESUME_MAY_CHANGE and not same(value, saved.get(key, defaults[key]))
    ]
    if differ:
        raise ResumeMismatchError(
            f"{saved_path}: resume recipe differs from the run's in {', '.join(differ)}; "
            f"resume with the saved values (only {', '.join(sorted(RESUME_MAY_CHANGE))} may change) "
            "or start a new output_dir"
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


def eval_interval(eval_every: int | None, total_steps: int) -> int:
    """Steps between evaluations: the recipe's, or (None) about EVAL_POINTS per run; 0: at the end only."""
    if eval_every is not None:
        return eval_every
    return max(1, math.ceil(total_steps / EVAL_POINTS))


def tracker_config(recipe: Recipe) -> dict[str, bool | int | float | str]:
    """The recipe as tracker hyper-parameters: scalars as they are, lists, mappings and null as JSON text."""
    return {
        key: value if isinstance(value, bool | int | float | str) else json.dumps(value)
        for key, value in recipe.to_dict().items()
    }


def tracker_scalars(prefix: str, row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log row (all but ``step``) as ``prefix/key`` scalars; None and lists are left out."""
    return {
        f"{prefix}/{key}": float(value)
        for key, value in row.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, num_classes: int
) -> dict[str, Any]:
    """Top-1/top-5 (over 5 classes)/per-class accuracy, loss, confusion matrix over a prepared loader (all
    processes)."""
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


# --- the update loop every task shares -----------------------------------------------------------


class Task(Protocol):
    """What differs between training tasks inside the update loop: the forward pass and the loss."""

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's outputs for one batch (run under the accelerator's autocast)."""

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        """The scalar training loss from the outputs (run outside autocast)."""


def train_updates(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    batches: Iterable[Any],
    total: int,
    start: int = 0,
    clip: float | None = None,
    on_batch: Callable[[torch.Tensor, Any, Any], None] | None = None,
    on_update: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
    error_note: str = "",
) -> int:
    """Optimizer updates from ``start`` to ``total`` over ``batches``; returns the last update's number.

    Each batch: forward (autocast), loss, a non-finite check (all processes), backward, gradient
    clipping when ``clip`` is given, and at the end of an accumulation the optimizer step.
    ``on_batch(loss, outputs, batch)`` follows every batch, ``on_update(update, loss, grad_norm)``
    every optimizer update (schedules, EMA, logs, evaluation and checkpoints live there).
    """
    step = start
    model.train()
    if step >= total:
        return step
    trainable = [p for p in model.parameters() if p.requires_grad]

    def non_finite(what: str, value: float) -> NonFiniteLossError:
        return NonFiniteLossError(f"non-finite {what} ({value}) at optimizer step {step + 1}{error_note}")

    for batch in batches:
        with accelerator.accumulate(model):
            with accelerator.autocast():
                outputs = task.forward(model, batch)
            loss = task.loss(outputs, batch)
            bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=loss.device)
            if accelerator.num_processes > 1:
                bad = accelerator.reduce(bad, "sum")
            if bad.item() > 0:
                raise non_finite("training loss", loss.item())
            accelerator.backward(loss)
            grad_norm = None
            if accelerator.sync_gradients and clip is not None:
                grad_norm = accelerator.clip_grad_norm_(trainable, clip)
                # NaN/Inf gradients with a finite loss: stop before the step poisons the weights
                # (under fp16 the grad scaler skips such steps itself)
                if accelerator.scaler is None and not torch.isfinite(torch.as_tensor(grad_norm)):
                    raise non_finite("gradient norm", float(grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if on_batch is not None:
            on_batch(loss, outputs, batch)
        if not accelerator.sync_gradients:
            continue
        step += 1
        if on_update is not None:
            on_update(step, loss, grad_norm)
        if step >= total:
            break
    return step


@dataclass
class ClassificationTask:
    """Image classification: logits from the model, cross-entropy with the recipe's label smoothing."""

    recipe: Recipe

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Logits of the batch's images."""
        return model(batch[0])

    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Cross-entropy in float32."""
        logits, labels, recipe = outputs, batch[1], self.recipe
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
        return loss


# --- the run's parts --------------------------------------------------------------------------------


def build_optimizer(
    model: nn.Module, recipe: Recipe, total_steps: int
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over the recipe's parameter groups, with linear warm-up and a cosine decay."""
    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=tuple(recipe.betas))
    warmup = recipe.warmup_steps or int(round(recipe.warmup_fraction * total_steps))
    scheduler = LambdaLR(optimizer, warmup_cosine(total_steps, warmup, recipe.min_lr_ratio))
    return optimizer, scheduler


@dataclass
class TrainingRun:
    """One run's state: what the named steps of :func:`train` (resume, loop, evaluate, save) share."""

    recipe: Recipe
    accelerator: Accelerator
    run_dir: Path
    data: TrainData
    method: Method
    model: nn.Module  # prepared by accelerate (maybe DDP/FSDP-wrapped); ``unwrapped`` is the module itself
    unwrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    report: TrainableReport | None
    n_trainable: int
    n_total: int
    t_start: float
    metrics_log: JsonlLog
    eval_log: JsonlLog
    step: int = 0
    window: _Window = field(default_factory=_Window)
    initial_eval: dict[str, Any] | None = None
    time_offset: float = 0.0  # training seconds before a resume
    lock: RunDirLock | None = None  # the run directory's lock (main process only)
    tracking: bool = False  # an accelerate tracker (log_with) is started

    @property
    def main(self) -> bool:
        """True on the process that writes files."""
        return self.accelerator.is_main_process

    def resume(self) -> None:
        """Continue from the newest complete checkpoint (if any), dropping log rows written after it."""
        folder, warnings = find_resumable(self.run_dir, self.accelerator.num_processes)
        for w in warnings:
            self.accelerator.print(f"warning: {w}")
        if folder is None:
            return
        if is_fsdp(self.accelerator):  # the checkpoint holds whole tensors; loading into shards is not built
            raise RunDirError(
                f"{folder}: resuming a run under FSDP is not supported; resume it with DDP on as many "
                "processes (recipes/accelerate/multi_gpu_ddp.yaml) or pass overwrite=true to start again"
            )
        saved = load_checkpoint_state(
            self.accelerator, folder, self.unwrapped, self.optimizer, self.scheduler
        )
        self.step, self.window = int(saved["step"]), _Window(saved.get("window"))
        self.initial_eval = saved.get("initial_eval")
        self.time_offset = float(saved.get("elapsed_s", 0.0))
        # The schedule is a function of total_steps: after a changed max_steps the next step's rate is the
        # new schedule's (the optimizer state holds the old one's); unchanged, this is the same number.
        sched = self.scheduler
        for group, base_lr, factor in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base_lr * factor(sched.last_epoch)
        extending = self.main and (self.run_dir / RESULT_FILE).exists() and self.step < self.data.total_steps
        if extending:  # the run is unfinished again until it reaches the new max_steps
            for name in (RESULT_FILE, "final_eval.json"):
                (self.run_dir / name).unlink(missing_ok=True)
            self.accelerator.print(
                f"extending the finished run from {self.step} to {self.data.total_steps} steps "
                "(the learning-rate schedule is re-planned over the new max_steps)"
            )
        if self.main:
            self.metrics_log.truncate_after(self.step)
            # a run resumed at its last step re-runs the final evaluation: drop the old row
            total_steps = self.data.total_steps
            self.eval_log.truncate_after(self.step - 1 if self.step >= total_steps else self.step)
        self.accelerator.print(f"resumed from {folder} at step {self.step}/{self.data.total_steps}")

    def start_logs(self) -> None:
        """Save the resolved recipe; a run starting at step 0 starts its logs afresh; start the tracker."""
        if self.main:
            self.recipe.save(self.run_dir / RECIPE_FILE)
            if self.step == 0:
                for log in (self.metrics_log, self.eval_log):
                    if log.path.exists():
                        log.path.unlink()
                shutil.rmtree(self.run_dir / TRACKER_DIR, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if self.recipe.log_with != "jsonl":
            # A file name of its own (the writer names files by the second, so a resume within the same
            # second would overwrite the earlier file); a resumed run hides the events logged after its
            # checkpoint (they are logged again).
            writer = {"filename_suffix": f".{time.time_ns()}"}
            init_kwargs = {"tensorboard": {**writer, "purge_step": self.step + 1} if self.step else writer}
            self.accelerator.init_trackers(TRACKER_DIR, tracker_config(self.recipe), init_kwargs)
            self.tracking = True

    def track(self, prefix: str, row: dict[str, Any]) -> None:
        """Send a log row's scalars to the recipe's tracker (log_with), at the row's step."""
        if self.tracking:
            self.accelerator.log(tracker_scalars(prefix, row), step=row["step"])

    def end_trackers(self) -> None:
        """Flush and close the tracker's files (main process; safe to call twice)."""
        if self.tracking and self.main:
            for tracker in self.accelerator.trackers:
                tracker.finish()
        self.tracking = False

    def run_eval(self, at_step: int, periodic: bool = False) -> dict[str, Any] | None:
        """Evaluate on the eval data (None without any; ``periodic``: the eval_limit subset if there is one)
        and append the row to the eval log."""
        if self.data.eval_dl is None:
            return None
        loader = self.data.eval_dl
        if periodic and self.data.periodic_eval_dl is not None:
            loader = self.data.periodic_eval_dl
        result = evaluate(self.model, loader, self.accelerator, self.data.num_classes)
        if self.main:
            keys = ("top1", "top5", "loss", "count", "per_class")
            row = {"step": at_step, **{k: result[k] for k in keys if k in result}}
            self.eval_log.append(row)
            self.track("eval", row)
        return result

    def checkpoint(self, at_step: int) -> None:
        """Save trainable tensors, buffers, optimizer, schedule, RNG and the loop's counters."""
        # whole tensors (FSDP shards are gathered: every process takes part)
        tensors = {n: full_tensor(p) for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        persistent = self.unwrapped.state_dict().keys()
        tensors.update({n: full_tensor(b) for n, b in self.unwrapped.named_buffers() if n in persistent})
        sharded = is_fsdp(self.accelerator)
        optimizer_state = full_optimizer_state(self.model, self.optimizer) if sharded else None
        state = {
            "window": self.window.state(),
            "initial_eval": self.initial_eval,
            "epoch": at_step // self.data.steps_per_epoch,
            "classes": list(self.data.classes),  # eval/predict of a checkpoint dir name the classes
            "elapsed_s": time.time() - self.t_start + self.time_offset,
        }
        save_checkpoint(
            self.accelerator,
            self.run_dir,
            at_step,
            tensors,
            self.optimizer,
            self.scheduler,
            state,
            self.recipe.keep_checkpoints,
            optimizer_state=optimizer_state,
        )

    def whole_model(self) -> nn.Module:
        """The trained model with whole tensors (collective): the model itself, or under FSDP a fresh
        unsharded copy holding the gathered state on the main process (the others get the sharded one)."""
        if not is_fsdp(self.accelerator):
            return self.unwrapped
        state = full_model_state(self.model)  # whole tensors, on the main process only
        if not self.main:
            return self.unwrapped
        whole = self.method.prepare(build_model(self.recipe, self.data.num_classes), self.recipe)
        whole.load_state_dict(state, strict=True)
        return whole

    def count_batch(self, loss: torch.Tensor, logits: torch.Tensor, batch: Any) -> None:
        """Add one batch's loss and correct predictions to the logging window."""
        labels = batch[1]
        correct = float((logits.detach().argmax(1) == labels).sum())
        self.window.add(float(loss.detach()) * labels.numel(), correct, labels.numel())

    def log_window(self, grad_norm: torch.Tensor | None, window_seconds: float) -> dict[str, Any]:
        """Reduce the window's sums over processes into one metrics row (written by the main process)."""
        accelerator = self.accelerator
        sums = torch.tensor(
            [self.window.loss, self.window.correct, float(self.window.count)],
            dtype=torch.float64,
            device=accelerator.device,
        )
        sums = accelerator.reduce(sums, "sum") if accelerator.num_processes > 1 else sums
        row = {
            "step": self.step,
            "epoch": round(self.step / self.data.steps_per_epoch, 4),
            "loss": float(sums[0] / sums[2]),
            "acc": float(100.0 * sums[1] / sums[2]),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "samples": int(sums[2]),
            "samples_per_s": round(float(sums[2]) / max(window_seconds, 1e-9), 2),
            "time_s": round(time.time() - self.t_start + self.time_offset, 3),
        }
        if self.main:
            self.metrics_log.append(row)
            self.track("train", row)
        return row

    def epochs(self) -> Iterable[Any]:
        """Training batches from the current step on, epoch after epoch (positioned for a resume)."""
        data = self.data
        while True:
            epoch, start = divmod(self.step, data.steps_per_epoch)
            # The epoch is the trainer's state: accelerate's loader calls set_epoch(its own iteration
            # counter, 0 after a restart) on the sampler and dataset when iterated, so set that counter first.
            data.train_dl.set_epoch(epoch)
            data.sampler.set_position(epoch, start)
            data.train_ds.set_epoch(epoch)
            yield from data.train_dl

    def train_steps(self) -> dict[str, Any] | None:
        """The step loop up to ``total_steps``; returns the last periodic evaluation (None if none ran)."""
        from tqdm.auto import tqdm

        recipe, data = self.recipe, self.data
        total_steps = data.total_steps
        step_file = os.environ.get(STEP_FILE_ENV) if self.main else None  # test hook, see STEP_FILE_ENV
        stop_at_steps = os.environ.get(STEP_STOP_ENV) == "1"
        bar = tqdm(
            total=total_steps,
            initial=self.step,
            disable=not (self.main and recipe.progress),
            desc="train",
            dynamic_ncols=True,
        )
        clip = recipe.clip_grad if recipe.clip_grad is not None else float("inf")
        last_eval: dict[str, Any] | None = None
        t_window = time.time()
        eval_every = eval_interval(recipe.eval_every, total_steps)

        def after_update(step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
            nonlocal last_eval, t_window
            self.scheduler.step()
            self.step = step
            bar.update(1)
            if step % recipe.log_every == 0 or step == total_steps:
                row = self.log_window(grad_norm, time.time() - t_window)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                self.window, t_window = _Window(), time.time()
            if eval_every and step % eval_every == 0 and step != total_steps:
                last_eval = self.run_eval(step, periodic=True)
            if recipe.save_every and step % recipe.save_every == 0 and step != total_steps:
                self.checkpoint(step)
            if step_file:
                _announce_step(step_file, step, stop_at_steps)

        train_updates(
            self.accelerator,
            self.model,
            self.optimizer,
            ClassificationTask(recipe),
            self.epochs(),
            total_steps,
            start=self.step,
            clip=clip,
            on_batch=self.count_batch,
            on_update=after_update,
            error_note=f"; the last complete checkpoint in {self.run_dir / CKPT_DIR} is kept",
        )
        bar.close()
        return last_eval

    def finish(self, last_eval: dict[str, Any] | None) -> TrainResult:
        """Final evaluation and checkpoint, the method's artefact, curves, and result.json (written last)."""
        recipe, accelerator, step = self.recipe, self.accelerator, self.step
        final_eval = self.run_eval(step) if self.data.eval_dl is not None else last_eval
        self.checkpoint(step)
        artefact = self.run_dir / self.method.artefact
        meta = _model_info_meta(recipe, self.data.classes)
        plot_path = None
        whole = self.whole_model()
        if self.main:
            meta["steps"] = step
            if final_eval is not None:
                meta["final_top1"] = final_eval["top1"]
            self.method.save(whole, artefact, meta)
            if final_eval is not None:
                atomic_write_text(self.run_dir / "final_eval.json", json.dumps(final_eval, indent=1))
            if recipe.plot:
                plot_path = plot_curves(
                    self.metrics_log.rows(),
                    self.eval_log.rows(),
                    self.run_dir / PLOT_FILE,
                    title=recipe.name or "",
                )
        self.end_trackers()  # the events are complete before result.json marks the run finished
        accelerator.wait_for_everyone()
        wall = time.time() - self.t_start
        result = TrainResult(
            run_dir=self.run_dir,
            steps=step,
            final_eval=final_eval,
            initial_eval=self.initial_eval,
            artefact=artefact,
            plot=plot_path if plot_path is not None else (self.run_dir / PLOT_FILE if recipe.plot else None),
            trainable_params=self.n_trainable,
            total_params=self.n_total,
            wall_time_s=wall,
            extras={"trainable_report": self.report},
        )
        if self.main:
            summary = {
                "steps": step,
                "top1": final_eval["top1"] if final_eval else None,
                "top5": final_eval.get("top5") if final_eval else None,
                "initial_top1": self.initial_eval["top1"] if self.initial_eval else None,
                "trainable_params": self.n_trainable,
                "total_params": self.n_total,
                "artefact": artefact.name,
                "artefact_bytes": artefact.stat().st_size,
                "wall_time_s": round(wall, 2),
                "num_processes": accelerator.num_processes,
                "method": recipe.method,
                "num_classes": self.data.num_classes,
                "classes": meta["classes"],
            }
            atomic_write_text(self.run_dir / RESULT_FILE, json.dumps(summary, indent=1))
        accelerator.wait_for_everyone()
        return result


def start_run(recipe: Recipe) -> TrainingRun:
    """Accelerator, run directory, seed, data, model with its method applied, optimizer; prepared."""
    t_start = time.time()
    run_dir = Path(recipe.output_dir)
    tracker = None if recipe.log_with == "jsonl" else recipe.log_with
    accelerator = fresh_accelerator(
        recipe.cpu, recipe.mixed_precision, recipe.grad_accum, tracker, run_dir if tracker else None
    )
    # The data is opened (and checked: unreadable images, NaN pixels, labels) before the run directory
    # is created or locked, so bad data leaves no half-started run behind.
    sources = build_sources(recipe)
    check_fsdp_active(accelerator)  # before any file is touched
    lock = _claim_run_dir(accelerator, run_dir, recipe)
    try:
        return _start_run(recipe, accelerator, run_dir, lock, t_start, sources)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _claim_run_dir(accelerator: Accelerator, run_dir: Path, recipe: Recipe) -> RunDirLock | None:
    """Main process: lock the run directory, check it, sweep leftovers; every rank raises what it raised."""
    lock, error = None, None
    if accelerator.is_main_process:
        lock = RunDirLock(run_dir)
        try:
            lock.acquire()
            stale = lock.stale_message()
            if stale:
                accelerator.print(f"warning: {stale}")
            prepare_run_dir(run_dir, recipe)
            sweep_temp_files(run_dir)  # leftovers of a killed save (no save is in flight now)
        except RunDirError as exc:
            lock.release()
            lock, error = None, exc
    if accelerator.num_processes > 1:  # the other ranks fail with the main's error instead of waiting
        from accelerate.utils import broadcast_object_list

        shared = [None if error is None else (type(error).__name__, str(error))]
        broadcast_object_list(shared, from_process=0)
        if shared[0] is not None and error is None:
            kinds = {c.__name__: c for c in (RunDirError, RunDirLockedError, ResumeMismatchError)}
            error = kinds.get(shared[0][0], RunDirError)(shared[0][1])
    if error is not None:
        raise error
    accelerator.wait_for_everyone()
    return lock


def _start_run(
    recipe: Recipe,
    accelerator: Accelerator,
    run_dir: Path,
    lock: RunDirLock | None,
    t_start: float,
    sources: tuple[ImageSource, ImageSource | None],
) -> TrainingRun:
    from accelerate.utils import set_seed

    set_seed(recipe.seed, deterministic=False)
    if accelerator.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    data = build_data(recipe, accelerator.num_processes, sources)
    method = get_method(recipe.method)
    model = method.prepare(build_model(recipe, data.num_classes), recipe)
    report = _trainable_report(model)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    if n_trainable == 0:
        raise RecipeError(f"method '{recipe.method}' left no trainable parameters")
    optimizer, scheduler = build_optimizer(model, recipe, data.total_steps)
    # The scheduler is stepped by hand once per optimizer step: accelerate's prepared scheduler would
    # step num_processes times per step, which changes the schedule with the process count.
    model, optimizer, data.train_dl = accelerator.prepare(model, optimizer, data.train_dl)
    if data.eval_dl is not None:
        data.eval_dl = accelerator.prepare(data.eval_dl)
    if data.periodic_eval_dl is not None:
        data.periodic_eval_dl = accelerator.prepare(data.periodic_eval_dl)
    return TrainingRun(
        recipe=recipe,
        accelerator=accelerator,
        run_dir=run_dir,
        data=data,
        method=method,
        model=model,
        unwrapped=accelerator.unwrap_model(model),
        optimizer=optimizer,
        scheduler=scheduler,
        report=report,
        n_trainable=n_trainable,
        n_total=n_total,
        t_start=t_start,
        metrics_log=JsonlLog(run_dir / METRICS_FILE),
        eval_log=JsonlLog(run_dir / EVAL_FILE),
        lock=lock,
    )


# --- the entry point --------------------------------------------------------------------------------


def train(
    recipe: Recipe | str | os.PathLike | dict | None = None, overrides: list[str] | dict | None = None
) -> TrainResult:
    """Run one training job described by a recipe (path, dict or Recipe) plus ``key=value`` overrides."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        recipe = load_recipe(recipe.to_dict(), overrides)
    recipe.check_tracker()
    run = start_run(recipe)
    try:
        if recipe.resume:
            run.resume()
        run.start_logs()
        if run.step == 0 and recipe.eval_at_start:
            run.initial_eval = run.run_eval(0)
        last_eval = run.train_steps()
        return run.finish(last_eval)
    finally:
        run.end_trackers()  # a failed run keeps the events it logged
        if run.lock is not None:
            run.lock.release()


def final_tensors(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Trainable tensors of the newest complete checkpoint of a run (for comparisons and tests)."""
    from safetensors.torch import load_file

    folder, _ = find_resumable(Path(run_dir))
    if folder is None:
        raise DataError(f"{run_dir}: no complete checkpoint")
    return load_file(str(folder / "trainable.safetensors"))
