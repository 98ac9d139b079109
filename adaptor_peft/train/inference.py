"""Load a finished run (or its recipe) back for evaluation and prediction."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import IMAGE_SUFFIXES, DataError, Preprocess, TransformedDataset, open_source
from .methods import get_method
from .metrics import ClassificationMeter
from .recipes import Recipe, load_recipe, resolve_path
from .trainer import RECIPE_FILE, RESULT_FILE, build_model


@dataclass
class TrainedModel:
    """A model rebuilt from a run directory, with its recipe and class names."""

    model: nn.Module
    recipe: Recipe
    classes: list[str]
    run_dir: Path


def load_trained(source: str | os.PathLike, artefact: str | os.PathLike | None = None) -> TrainedModel:
    """Rebuild base model + method + trained tensors from a run dir (or a recipe whose output_dir ran)."""
    source = Path(source)
    if source.is_dir():
        run_dir, recipe_path = source, source / RECIPE_FILE
        if not recipe_path.is_file():
            raise FileNotFoundError(f"{source}: not a run directory (no {RECIPE_FILE})")
        recipe = load_recipe(recipe_path)
    elif source.is_file():
        recipe = load_recipe(source)
        run_dir = Path(recipe.output_dir)
    else:
        raise FileNotFoundError(f"run directory or recipe not found: {source}")
    result_path = run_dir / RESULT_FILE
    if not result_path.is_file():
        raise FileNotFoundError(f"{run_dir}: holds no finished run ({RESULT_FILE} missing)")
    result = json.loads(result_path.read_text())
    classes = list(result.get("classes") or [])
    num_classes = int(result.get("num_classes") or len(classes))
    method = get_method(recipe.method)
    # Seed as the trainer does before building: a base without a checkpoint (or a fresh head) is then
    # initialised exactly as in training, so the adaptor file's base fingerprint matches.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = method.prepare(build_model(recipe, num_classes), recipe)
    path = Path(artefact) if artefact is not None else run_dir / method.artefact
    if not path.is_file():
        raise FileNotFoundError(f"trained weights not found: {path}")
    model = method.load(model, path)
    model.eval()
    return TrainedModel(model, recipe, classes or [str(i) for i in range(num_classes)], run_dir)


@torch.no_grad()
def evaluate_dataset(
    trained: TrainedModel,
    data: str | os.PathLike | None = None,
    split: str | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Evaluate a trained model on a dataset (default: the recipe's eval_data)."""
    path = resolve_path(data) if data is not None else resolve_path(trained.recipe.eval_data)
    if path is None:
        raise DataError("no evaluation data: pass a dataset path (the recipe has no eval_data)")
    source = open_source(path, split or trained.recipe.eval_split or "test", trained.recipe.bad_images)
    num_classes = len(trained.classes)
    source.check_labels(num_classes)
    loader = DataLoader(
        TransformedDataset(source, Preprocess(trained.recipe, train=False)), batch_size=batch_size
    )
    meter = ClassificationMeter(num_classes)
    for images, labels in loader:
        logits = trained.model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        meter.update(logits, labels, float(loss))
    return meter.compute()


def image_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: no image files found")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return files


@torch.no_grad()
def predict_files(trained: TrainedModel, files: list[Path], topk: int = 5) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each image file."""
    from PIL import Image

    pre = Preprocess(trained.recipe, train=False)
    out = []
    k = min(topk, len(trained.classes))
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                x = pre(img.copy())
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        probs = trained.model(x[None]).float().softmax(dim=1)[0]
        values, idx = probs.topk(k)
        out.append(
            {
                "file": str(path),
                "top": [(trained.classes[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())],
            }
        )
    return out
