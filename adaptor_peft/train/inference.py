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

from .build import build_model, is_checkpoint_model
from .data import IMAGE_SUFFIXES, DataError, Preprocess, TransformedDataset, open_source
from .methods import get_method
from .metrics import ClassificationMeter
from .recipes import Recipe, load_recipe, resolve_path
from .trainer import RECIPE_FILE, RESULT_FILE


@dataclass
class TrainedModel:
    """A model rebuilt from a run directory, with its recipe and class names."""

    model: nn.Module
    recipe: Recipe
    classes: list[str]
    run_dir: Path


def _training_metadata(path: Path) -> tuple[dict[str, Any], int]:
    """(metadata the trainer stored, head size or 0) of a trained file: an adaptor file's validated
    user metadata, or the JSON-valued metadata of the other methods' files (linear probe, LoRA, full)."""
    from adaptor_peft.io import META_FORMAT_VERSION, AdaptorMetadataError, read_adaptor_file
    from adaptor_peft.models.checkpoint import read_safetensors_metadata

    raw_meta = read_safetensors_metadata(path)
    if META_FORMAT_VERSION in raw_meta:  # an adaptor file: checksum verified before its recipe is used
        header, _ = read_adaptor_file(path)
        meta, head = header.user_metadata, int(header.base_config.get("num_classes", 0) or 0)
        hint = "load it in Python with adaptor_peft.load_adaptors(base_model, path)"
    else:
        meta, head = {}, 0
        for key, value in raw_meta.items():
            try:
                meta[key] = json.loads(value)
            except ValueError:
                meta[key] = value
        hint = "pass the run directory instead"
    if not isinstance(meta.get("recipe"), dict):
        why = f"holds no training recipe (it was not written by `adaptor-peft train`); {hint}"
        raise AdaptorMetadataError(path, why, key="recipe")
    return meta, head


def _check_buildable(data: dict[str, Any], path: Path) -> None:
    """A trained file's recipe may rebuild only our models, never a download: refused before building."""
    from adaptor_peft.io import AdaptorMetadataError
    from adaptor_peft.models import list_models

    model = data.get("model", Recipe.model)
    if not (
        isinstance(model, dict)
        or (isinstance(model, str) and (model in list_models() or is_checkpoint_model(model)))
    ):
        raise AdaptorMetadataError(
            path,
            f"its recipe names the model {str(model)[:80]!r}, not an adaptor_peft model (a name from "
            "adaptor_peft.list_models(), a config or a .safetensors file); a trained file rebuilds only "
            "those: pass the run directory instead",
            key="recipe.model",
        )
    kwargs = data.get("model_kwargs")
    fetch = sorted(k for k in kwargs if str(k).startswith("pretrained")) if isinstance(kwargs, dict) else []
    if fetch:
        raise AdaptorMetadataError(
            path,
            f"its recipe sets model_kwargs {fetch}: a trained file never downloads weights; pass the base "
            "checkpoint with --base instead",
            key="recipe.model_kwargs",
        )


def _from_trained_file(path: Path, base: str | os.PathLike | None) -> tuple[Recipe, list[str]]:
    """The training recipe and class names a file written by `adaptor-peft train` carries in its header.

    base replaces the base weights the recipe names: the recipe's model when that is a checkpoint
    file, else its `checkpoint` (a VMamba name or config then builds the architecture).
    """
    meta, head = _training_metadata(path)
    data = dict(meta["recipe"])
    _check_buildable(data, path)
    if base is not None:
        if not Path(base).is_file():
            raise FileNotFoundError(f"base checkpoint not found: {base}")
        data["model" if is_checkpoint_model(data.get("model")) else "checkpoint"] = str(base)
    data["output_dir"] = str(path.parent)
    recipe = load_recipe(data)
    classes = [str(c) for c in meta.get("classes") or []] or [str(i) for i in range(head)]
    return recipe, classes


def load_trained(
    source: str | os.PathLike,
    artefact: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
) -> TrainedModel:
    """Rebuild base model + method + trained tensors from a run dir, a recipe whose output_dir ran, or
    a trained file (.safetensors from `adaptor-peft train`: its header carries the recipe; `base` swaps
    the base weights)."""
    source = Path(source)
    if source.is_file() and source.suffix == ".safetensors":
        if artefact is not None:
            raise ValueError(f"{source} is itself a trained file: pass either it or --weights, not both")
        recipe, classes = _from_trained_file(source, base)
        try:
            return _rebuild(recipe, classes, source, source.parent)
        except FileNotFoundError as exc:
            if base is not None:
                raise
            raise FileNotFoundError(
                f"{exc}; {source} was trained on that base: pass its location with --base"
            ) from exc
    if base is not None:
        raise ValueError("a base checkpoint goes with a trained .safetensors file, not a run dir or recipe")
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
    path = Path(artefact) if artefact is not None else run_dir / get_method(recipe.method).artefact
    if not path.is_file():
        raise FileNotFoundError(f"trained weights not found: {path}")
    return _rebuild(recipe, classes or [str(i) for i in range(num_classes)], path, run_dir)


def _rebuild(recipe: Recipe, classes: list[str], weights: Path, run_dir: Path) -> TrainedModel:
    """Base model + method as the trainer built them, then the trained tensors from `weights`."""
    method = get_method(recipe.method)
    # Seed as the trainer does before building: a base without a checkpoint (or a fresh head) is then
    # initialised exactly as in training, so the adaptor file's base fingerprint matches.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = method.prepare(build_model(recipe, len(classes)), recipe)
    model = method.load(model, weights)
    model.eval()
    return TrainedModel(model, recipe, classes, run_dir)


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
