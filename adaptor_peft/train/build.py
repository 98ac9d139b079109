"""What a training run is built from: the model (with the recipe's checkpoint) and the data loaders."""

from __future__ import annotations

import math
from dataclasses import dataclass

import timm
from torch import nn
from torch.utils.data import DataLoader

from ..models import create_model, list_models
from .classmap import align_classes
from .data import (
    EpochSampler,
    ImageSource,
    Preprocess,
    SubsetSource,
    TransformedDataset,
    open_source,
    split_holdout,
    stratified_subset,
)
from .recipes import Recipe, RecipeError, resolve_path


def is_checkpoint_model(name: str | dict) -> bool:
    """True when a recipe's `model` names a self-describing checkpoint file (config in its metadata)."""
    return isinstance(name, str) and (name.startswith("asset:") or name.endswith(".safetensors"))


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    """Create the base model (VMamba name/config or any timm model) with the recipe's checkpoint."""
    checkpoint = resolve_path(recipe.checkpoint)
    if checkpoint is not None and not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint} (recipe key 'checkpoint')")
    kwargs = dict(recipe.model_kwargs)
    name = recipe.model
    if is_checkpoint_model(name):
        name = str(resolve_path(name))
    if not isinstance(name, str) or not _is_foreign_timm_name(name):
        model = create_model(name, checkpoint=checkpoint, num_classes=num_classes, **kwargs)
    else:
        if checkpoint is not None:
            raise RecipeError(f"model '{name}' is a plain timm model: 'checkpoint' is not supported for it")
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    if recipe.reset_head:
        model.reset_classifier(num_classes)
    return model


def _is_foreign_timm_name(name: str) -> bool:
    """A timm model name that is not one of ours (trainer tests and baselines may use any timm model)."""
    return name not in list_models() and timm.is_model(name)


def build_sources(recipe: Recipe) -> tuple[ImageSource, ImageSource | None]:
    """Training and evaluation sources (train_limit subset, val_fraction hold-out)."""
    if recipe.train_data is None:
        raise RecipeError("recipe key 'train_data' is not set (a .npz, ImageFolder dir or datasets dir)")
    checks = dict(
        bad_images=recipe.bad_images,
        check_images=recipe.check_images,
        nonfinite_pixels=recipe.nonfinite_pixels,
    )
    train = open_source(resolve_path(recipe.train_data), recipe.train_split, **checks)
    evals = None
    if recipe.eval_data is not None:
        evals = open_source(resolve_path(recipe.eval_data), recipe.eval_split or "test", **checks)
    elif recipe.val_fraction > 0:
        keep, hold = split_holdout(train.labels, recipe.val_fraction, recipe.seed)
        train, evals = SubsetSource(train, keep), SubsetSource(train, hold)
    if recipe.train_limit is not None and recipe.train_limit < len(train):
        train = SubsetSource(train, stratified_subset(train.labels, recipe.train_limit, recipe.seed))
    return train, evals


@dataclass
class TrainData:
    """The training and evaluation data of a run, and how many optimizer steps it takes."""

    classes: list[str]  # one name per class index (data classes, then numbers for the extra ones)
    num_classes: int
    train_ds: TransformedDataset
    sampler: EpochSampler
    train_dl: DataLoader
    eval_dl: DataLoader | None
    steps_per_epoch: int
    total_steps: int
    periodic_eval_dl: DataLoader | None = None  # the eval_limit subset for periodic evaluations, if any


def build_data(
    recipe: Recipe, num_processes: int, sources: tuple[ImageSource, ImageSource | None] | None = None
) -> TrainData:
    """Open the sources (or take ``sources``, from build_sources), check their labels and build the
    loaders (not yet prepared by accelerate)."""
    train_src, eval_src = sources if sources is not None else build_sources(recipe)
    num_classes = recipe.num_classes or len(train_src.classes)
    train_src.check_labels(num_classes)
    classes = train_src.classes[:num_classes] + [str(i) for i in range(len(train_src.classes), num_classes)]
    if eval_src is not None and train_src.named_classes:  # named eval classes: matched by name
        eval_src = align_classes(eval_src, classes)
    elif eval_src is not None:
        eval_src.check_labels(num_classes)
    train_ds = TransformedDataset(train_src, Preprocess(recipe, train=True), seed=recipe.seed)
    samples_per_step = recipe.batch_size * recipe.grad_accum * num_processes
    sampler = EpochSampler(len(train_ds), samples_per_step, recipe.seed)
    train_dl = DataLoader(
        train_ds, batch_size=recipe.batch_size, sampler=sampler, num_workers=recipe.num_workers
    )
    eval_dl = periodic_eval_dl = None

    def eval_loader(source: ImageSource) -> DataLoader:
        return DataLoader(
            TransformedDataset(source, Preprocess(recipe, train=False)),
            batch_size=recipe.eval_batch_size or recipe.batch_size,
            shuffle=False,
            num_workers=recipe.num_workers,
        )

    if eval_src is not None:
        eval_dl = eval_loader(eval_src)
        if recipe.eval_limit is not None and recipe.eval_limit < len(eval_src):
            subset = stratified_subset(eval_src.labels, recipe.eval_limit, recipe.seed)
            periodic_eval_dl = eval_loader(SubsetSource(eval_src, subset))
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * steps_per_epoch))
    data = TrainData(classes, num_classes, train_ds, sampler, train_dl, eval_dl, steps_per_epoch, total_steps)
    data.periodic_eval_dl = periodic_eval_dl
    return data
