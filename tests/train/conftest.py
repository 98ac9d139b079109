"""Training-test fixtures: the toy data, a probe that captures the model the trainer trains, and a plain
PyTorch reference loop that the trainer's runs are checked against.

Training tests use tiny models: one intra-op thread is as fast as two there, and it avoids OpenMP
spin-waiting when the machine is busy (2 threads on an oversubscribed 2-core box are ~10x slower).

The reference loop shares no code with the trainer: it preprocesses the .npz images, orders the samples,
groups the parameters, schedules the learning rate, clips and steps torch.optim.AdamW itself, from the
definitions the trainer documents (data.py EpochSampler, trainer.param_groups and warmup_cosine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import TINY_VMAMBA, write_toy_npz

HEAD = {"classifier.head.weight", "classifier.head.bias"}  # the tiny VMamba's classifier head


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """(train.npz, eval.npz): 48 / 24 synthetic 12x12 images in 4 classes (a bar whose place is the class)."""
    root = tmp_path_factory.mktemp("toy")
    return write_toy_npz(root / "train.npz", 48, num_classes=4, size=12, seed=0), write_toy_npz(
        root / "eval.npz", 24, num_classes=4, size=12, seed=1
    )


# --- what the trainer trained ---------------------------------------------------------------------


@dataclasses.dataclass
class Captured:
    """The model object the trainer trains, with its state and trainable names right after `prepare`."""

    model: Any = None
    initial: dict[str, torch.Tensor] | None = None
    trainable: set[str] | None = None


@contextlib.contextmanager
def capture_trained_model():
    """Within the block, `train()` hands its prepared model (and a deep copy of its initial state) out."""
    from adaptor_peft.train import trainer as trainer_mod

    real_get_method = trainer_mod.get_method
    captured = Captured()

    def get_method(name):
        method = real_get_method(name)

        def prepare(model, recipe):
            model = method.prepare(model, recipe)
            captured.model = model
            captured.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
            captured.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            return model

        return dataclasses.replace(method, prepare=prepare)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "get_method", get_method)
        yield captured


# --- the independent reference ----------------------------------------------------------------------


def expected_trainable(method: str, model: torch.nn.Module) -> set[str]:
    """Which parameters a method must train, from what it is meant to do (not from the methods package)."""
    names = {n for n, _ in model.named_parameters()}
    if method == "full":
        return names
    if method == "linear_probe":
        return set(HEAD)
    if method == "adaptor":  # the parameters injection added (absent from the plain model) + the head
        plain = {n for n, _ in build_plain_model().named_parameters()}
        return (names - plain) | HEAD
    raise ValueError(method)


def build_plain_model(config: dict | None = None, num_classes: int = 4) -> torch.nn.Module:
    """A VMamba config (the tiny one by default) without adaptors."""
    from adaptor_peft.models import create_model

    return create_model(dict(config or TINY_VMAMBA), num_classes=num_classes)


def build_architecture(recipe) -> torch.nn.Module:
    """The recipe's model with its adaptors (weights are loaded afterwards)."""
    model = build_plain_model(recipe.model)
    if recipe.method == "adaptor":
        from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors

        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.adaptor.items()}
        inject_adaptors(model, MambaAdaptorConfig(**cfg), freeze_base=False)
    return model


def toy_tensors(npz: Path, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, 3, S, S) inputs the recipe feeds: gray uint8 centred on a black S x S canvas, /255, then
    normalised with mean = std = 0.5 and repeated over 3 channels; and the int64 labels."""
    with np.load(npz) as f:
        x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    n, h, w = x.shape
    top, left = (img_size - h) // 2, (img_size - w) // 2
    canvas = torch.zeros(n, img_size, img_size)
    canvas[:, top : top + h, left : left + w] = x.float() / 255.0
    return ((canvas - 0.5) / 0.5).unsqueeze(1).repeat(1, 3, 1, 1), y.long()


def lr_of_step(peak: float, k: int, warmup: int, total: int, min_ratio: float) -> float:
    """The learning rate of optimizer step k (1-based): linear warm-up peak * k / (warmup + 1) for the
    first `warmup` steps, then a half cosine from the peak (step warmup + 1) to peak * min_ratio, which
    it reaches one step after the last (step total + 1)."""
    if k <= warmup:
        return peak * k / (warmup + 1)
    t = (k - 1 - warmup) / (total - warmup)
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def step_batches(n: int, per_step: int, seed: int, steps: int) -> list[torch.Tensor]:
    """Sample indices of each optimizer step: per epoch e a permutation of range(n) from a generator
    seeded seed * 100003 + e, cut into whole steps (the remainder is dropped)."""
    per_epoch = n // per_step
    out = []
    for k in range(steps):
        epoch, j = divmod(k, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(perm[j * per_step : (j + 1) * per_step])
    return out


def plain_adamw_run(recipe, initial: dict[str, torch.Tensor], trainable: set[str]) -> dict[str, Any]:
    """Train ``trainable`` from ``initial`` with a hand-written loop: one whole optimizer batch per
    forward (no micro-batches, one process), mean cross-entropy, global-norm clipping, AdamW with the
    closed-form learning rate set before every step. Returns the final tensors and per-step logs."""
    assert recipe.base_lr is None and recipe.layer_decay is None and recipe.mixed_precision == "no"
    assert recipe.max_steps is not None and recipe.augment == "none" and recipe.resize == "pad"
    assert list(recipe.mean) == list(recipe.std) == [0.5, 0.5, 0.5]  # what toy_tensors normalises with
    torch.manual_seed(1234)  # nothing below may depend on the global RNG
    images, labels = toy_tensors(Path(recipe.train_data), recipe.img_size)
    model = build_architecture(recipe)
    model.load_state_dict(initial, strict=True)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    model.train()
    params = {n: p for n, p in model.named_parameters() if n in trainable}
    no_decay_names = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = []
    for n, p in params.items():
        peak = recipe.head_lr if (n in HEAD and recipe.head_lr is not None) else recipe.lr
        decay = not (p.ndim <= 1 or n.endswith(".bias") or n in no_decay_names)
        groups.append({"params": [p], "peak": peak, "weight_decay": recipe.weight_decay if decay else 0.0})
    opt = torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), eps=1e-8)
    total = recipe.max_steps
    warmup = recipe.warmup_steps
    per_step = recipe.batch_size * recipe.grad_accum
    log: dict[str, list] = {"loss": [], "grad_norm": [], "lr": []}
    for k, idx in enumerate(step_batches(len(labels), per_step, recipe.seed, total), start=1):
        for g in opt.param_groups:
            g["lr"] = lr_of_step(g["peak"], k, warmup, total, recipe.min_lr_ratio)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[idx]), labels[idx], label_smoothing=recipe.label_smoothing)
        loss.backward()
        grads = [p.grad for p in params.values() if p.grad is not None]
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        if recipe.clip_grad is not None:
            scale = min(1.0, recipe.clip_grad / (norm + 1e-6))
            for g in grads:
                g.mul_(scale)
        opt.step()
        log["loss"].append(float(loss.detach()))
        log["grad_norm"].append(norm)
        log["lr"].append(lr_of_step(recipe.lr, k, warmup, total, recipe.min_lr_ratio))
    log["tensors"] = {n: p.detach().clone() for n, p in params.items()}
    return log


@pytest.fixture(scope="session")
def oracle():
    """The helpers above, for test modules (a fixture: conftest modules are not meant to be imported)."""
    return types.SimpleNamespace(
        HEAD=HEAD,
        capture=capture_trained_model,
        expected_trainable=expected_trainable,
        lr_of_step=lr_of_step,
        toy_tensors=toy_tensors,
        plain_adamw_run=plain_adamw_run,
    )
