"""Load a trained model back for evaluation and prediction: a finished run (or its recipe), a trained
file, a training checkpoint directory, or a peft ``save_pretrained`` directory."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .build import build_model, build_sources, is_checkpoint_model
from .checkpointing import CKPT_DIR, CheckpointError, find_resumable, verify_checkpoint
from .classmap import align_classes, classes_without_examples
from .data import IMAGE_SUFFIXES, DataError, Preprocess, TransformedDataset, open_source
from .methods import get_method
from .metrics import ClassificationMeter
from .recipes import Recipe, RecipeError, load_recipe, resolve_path
from .trainer import RECIPE_FILE, RESULT_FILE

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


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


def _safetensors_meta(path: Path) -> dict[str, Any]:
    """A .safetensors file's metadata with JSON values decoded ({} for other files)."""
    from adaptor_peft.models.checkpoint import read_safetensors_metadata

    if path.suffix != ".safetensors":
        return {}
    out: dict[str, Any] = {}
    for key, value in read_safetensors_metadata(path).items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


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
    file, else its `checkpoint` (a VMamba name or config then builds the architecture). A base file
    without 'config' metadata gets its architecture from the adaptor file's recorded base config.
    """
    meta, head = _training_metadata(path)
    data = dict(meta["recipe"])
    _check_buildable(data, path)
    if base is not None:
        base = resolve_path(base)
        if not base.is_file():
            raise FileNotFoundError(f"base checkpoint not found: {base}")
        if is_checkpoint_model(data.get("model")):
            if "config" in _safetensors_meta(base):
                data["model"] = str(base)
            else:  # weights only: the architecture is the one the trained file records
                data["model"], data["checkpoint"] = _recorded_base_config(path, base), str(base)
        else:
            data["checkpoint"] = str(base)
    data["output_dir"] = str(path.parent)
    recipe = load_recipe(data)
    classes = [str(c) for c in meta.get("classes") or []] or [str(i) for i in range(head)]
    return recipe, classes


def _recorded_base_config(path: Path, base: Path) -> dict[str, Any]:
    """The VSSM config of the base an adaptor file was saved on (for a --base without 'config')."""
    from adaptor_peft.io import META_FORMAT_VERSION, parse_adaptor_header, read_safetensors
    from adaptor_peft.models.checkpoint import read_safetensors_metadata

    if META_FORMAT_VERSION in read_safetensors_metadata(path):
        config = dict(parse_adaptor_header(read_safetensors(path, header_only=True)).base_config)
        config.pop("num_classes", None)
        if config:
            return config
    raise ValueError(
        f"--base {base}: the file has no 'config' metadata and {path} does not record its base "
        "architecture; pass a base file that carries its config (one written by `adaptor-peft train` or "
        "`adaptor-peft convert`, e.g. `adaptor-peft convert official.pth base.safetensors`)"
    )


def _is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "manifest.json").is_file() or path.name == CKPT_DIR)


def _is_peft_dir(path: Path) -> bool:
    return path.is_dir() and (path / PEFT_CONFIG).is_file()


def _checkpoint_folder(path: Path) -> Path:
    """A complete checkpoint folder: ``path`` itself (verified), or the newest one in a checkpoints/ dir."""
    if path.name == CKPT_DIR and not (path / "manifest.json").is_file():
        folder, _ = find_resumable(path.parent)
        if folder is None:
            raise CheckpointError(f"{path}: holds no complete checkpoint")
        return folder
    verify_checkpoint(path)
    return path


#: result.json / state.json / adapter_config.json hold class names and settings: a few MB at most even
#: for a million classes; anything larger (or a FIFO, a device) is refused before it is read.
_MAX_RUN_JSON_BYTES = 64 << 20


def _read_run_json(path: Path) -> dict[str, Any]:
    """A run folder's small JSON file, size-bounded, as a mapping (ValueError naming the file otherwise)."""
    from adaptor_peft.regular_file import read_bounded

    try:
        data = json.loads(read_bounded(path, _MAX_RUN_JSON_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot be read ({reason}); restore it or retrain") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds {type(data).__name__}, not a JSON object; restore it or retrain")
    return data


def _run_classes(run_dir: Path, recipe: Recipe, folder: Path | None = None) -> list[str]:
    """Class names of a run: its checkpoint's state, its result.json, else its training data's."""
    if folder is not None:
        state = _read_run_json(folder / "state.json")
        if isinstance(state.get("classes"), list):
            return [str(c) for c in state["classes"]]
    result_path = run_dir / RESULT_FILE
    if result_path.is_file():
        result = _read_run_json(result_path)
        classes = list(result.get("classes") or [])
        num_classes = int(result.get("num_classes") or len(classes))
        return [str(c) for c in classes] or [str(i) for i in range(num_classes)]
    train_src, _ = build_sources(recipe)  # an unfinished run that predates stored class names
    n = recipe.num_classes or len(train_src.classes)
    return [str(c) for c in train_src.classes[:n]] + [str(i) for i in range(len(train_src.classes), n)]


def _run_recipe(run_dir: Path) -> Recipe:
    recipe_path = run_dir / RECIPE_FILE
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {RECIPE_FILE})")
    return load_recipe(recipe_path)


def load_trained(
    source: str | os.PathLike,
    artefact: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    allow_base_mismatch: bool = False,
) -> TrainedModel:
    """Rebuild base model + method + trained tensors for evaluation and prediction.

    ``source``: a run dir, a recipe whose output_dir ran, a trained file (.safetensors from `adaptor-peft
    train`: its header carries the recipe), a training checkpoint dir (``runs/x/checkpoints[/step_N]``)
    or a peft ``save_pretrained`` dir. ``artefact`` loads other trained weights (file, checkpoint or peft
    dir) into the run's model; ``base`` swaps the base weights of a trained file or peft dir;
    ``allow_base_mismatch`` loads an adaptor file onto another base (with a warning).
    """
    source = Path(source)
    if _is_peft_dir(source):
        if artefact is not None:
            raise ValueError(f"{source} is itself a peft adapter directory: pass either it or --weights")
        return _from_peft_dir(source, base)
    if base is not None and not (source.is_file() and source.suffix == ".safetensors"):
        raise ValueError(
            "a base checkpoint goes with a trained .safetensors file or a peft directory, "
            "not a run dir, recipe or checkpoint directory"
        )
    if source.is_file() and source.suffix == ".safetensors":
        if artefact is not None:
            raise ValueError(f"{source} is itself a trained file: pass either it or --weights, not both")
        recipe, classes = _from_trained_file(source, base)
        try:
            return _rebuild(recipe, classes, source, source.parent, allow_base_mismatch)
        except FileNotFoundError as exc:
            if base is not None:
                raise
            raise FileNotFoundError(
                f"{exc}; {source} was trained on that base: pass its location with --base"
            ) from exc
    if _is_checkpoint_dir(source):
        if artefact is not None:
            raise ValueError(f"{source} is itself a checkpoint directory: pass either it or --weights")
        folder = _checkpoint_folder(source)
        run_dir = folder.parent.parent
        recipe = _run_recipe(run_dir)
        return _rebuild(recipe, _run_classes(run_dir, recipe, folder), folder, run_dir, allow_base_mismatch)
    if source.is_dir():
        run_dir = source
        recipe = _run_recipe(run_dir)
    elif source.is_file():
        recipe = load_recipe(source)
        run_dir = Path(recipe.output_dir)
    else:
        raise FileNotFoundError(f"run directory or recipe not found: {source}")
    if artefact is None and not (run_dir / RESULT_FILE).is_file():
        hint = ""
        if find_resumable(run_dir)[0] is not None:
            hint = f"; to use its newest checkpoint pass {run_dir / CKPT_DIR}"
        raise FileNotFoundError(f"{run_dir}: holds no finished run ({RESULT_FILE} missing){hint}")
    path = Path(artefact) if artefact is not None else run_dir / get_method(recipe.method).artefact
    if not path.exists():
        raise FileNotFoundError(f"trained weights not found: {path}")
    folder = _checkpoint_folder(path) if _is_checkpoint_dir(path) else None
    classes = _run_classes(run_dir, recipe, folder)
    if _is_peft_dir(path):
        return _peft_model(recipe, classes, path, run_dir)
    return _rebuild(recipe, classes, folder or path, run_dir, allow_base_mismatch)


def _build_for_trained_head(recipe: Recipe, num_classes: int) -> nn.Module:
    """build_model without the warning that the base's head was dropped for a fresh one: the caller
    loads the trained head over it, so that warning would describe something that does not happen."""
    from adaptor_peft.models.factory import HeadReplacedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeadReplacedWarning)
        return build_model(recipe, num_classes)


def _rebuild(
    recipe: Recipe, classes: list[str], weights: Path, run_dir: Path, allow_base_mismatch: bool = False
) -> TrainedModel:
    """Base model + method as the trainer built them, then the trained tensors from ``weights`` (a
    trained file or a checkpoint folder). Every method's trained weights include the head."""
    method = get_method(recipe.method)
    # Seed as the trainer does before building: a base without a checkpoint (or a fresh head) is then
    # initialised exactly as in training, so the adaptor file's base fingerprint matches.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = method.prepare(_build_for_trained_head(recipe, len(classes)), recipe)
    if weights.is_dir():
        _load_checkpoint_tensors(model, weights)
    elif allow_base_mismatch and _is_adaptor_file(weights):
        from adaptor_peft.io import load_adaptors

        load_adaptors(model, weights, strict=True, allow_base_mismatch=True)
    else:
        model = method.load(model, weights)
    model.eval()
    return TrainedModel(model, recipe, classes, run_dir)


def _is_adaptor_file(path: Path) -> bool:
    from adaptor_peft.io import META_FORMAT_VERSION
    from adaptor_peft.models.checkpoint import read_safetensors_metadata

    return path.suffix == ".safetensors" and META_FORMAT_VERSION in read_safetensors_metadata(path)


def _load_checkpoint_tensors(model: nn.Module, folder: Path) -> None:
    """Load a verified checkpoint's trainable tensors (and buffers) into the method-prepared model."""
    from safetensors.torch import load_file

    from .checkpointing import copy_checkpoint_tensors

    copy_checkpoint_tensors(model, load_file(str(folder / "trainable.safetensors")), folder)


# --- peft save_pretrained directories ---------------------------------------------------------------


def _peft_head_size(folder: Path) -> int | None:
    """Rows of the classifier head the adapter saved (modules_to_save), or None when it saved none."""
    from adaptor_peft.io import read_safetensors

    raw = read_safetensors(folder / PEFT_WEIGHTS, header_only=True)
    for name, entry in raw.entries.items():
        if name.endswith("head.weight") and "classifier" in name and len(entry.shape) == 2:
            return int(entry.shape[0])
    return None


def _from_peft_dir(folder: Path, base: str | os.PathLike | None) -> TrainedModel:
    """A peft directory on its base: ``base`` (or adapter_config.json's base_model_name_or_path), a
    model file that carries its config; its metadata gives the preprocessing and class names."""
    if not (folder / PEFT_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder}: peft adapter directory without {PEFT_WEIGHTS}")
    named = _read_run_json(folder / PEFT_CONFIG).get("base_model_name_or_path")
    if base is None:
        if not named or not resolve_path(named).is_file():
            raise FileNotFoundError(
                f"{folder}: {PEFT_CONFIG} names no base model file (base_model_name_or_path: {named!r}); "
                "pass the base weights with --base FILE"
            )
        base = named
    base_path = resolve_path(base)
    if not base_path.is_file():
        raise FileNotFoundError(f"base checkpoint not found: {base_path}")
    meta = _safetensors_meta(base_path)
    if "config" not in meta:
        raise ValueError(
            f"--base {base_path}: a peft directory needs a base file that carries its config (one written "
            "by `adaptor-peft train` or `adaptor-peft convert`)"
        )
    data: dict[str, Any] = {"model": str(base_path), "output_dir": str(folder)}
    data.update({k: meta[k] for k in ("img_size", "resize", "mean", "std") if k in meta})
    try:
        recipe = load_recipe(data)
    except RecipeError as exc:
        raise ValueError(f"{base_path}: its preprocessing metadata is not usable: {exc}") from None
    head = _peft_head_size(folder) or int(meta["config"].get("num_classes") or 0)
    base_classes = [str(c) for c in meta.get("classes") or []]
    classes = base_classes if len(base_classes) == head else [str(i) for i in range(head)]
    return _peft_model(recipe, classes, folder, folder)


def _peft_model(recipe: Recipe, classes: list[str], folder: Path, run_dir: Path) -> TrainedModel:
    """The recipe's base model with the peft adapter of ``folder`` (peft's own loader)."""
    from peft import PeftModel

    import adaptor_peft.peft_tuner  # noqa: F401 - registers the tuner with peft

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        base = _build_for_trained_head(recipe, len(classes))
    if _peft_head_size(folder) is None and len(classes) != getattr(base, "num_classes", len(classes)):
        raise ValueError(f"{folder}: the adapter saved no classifier head and the base's head differs")
    model = PeftModel.from_pretrained(base, str(folder))
    model.eval()
    return TrainedModel(model, recipe, classes, run_dir)


@torch.no_grad()
def evaluate_dataset(
    trained: TrainedModel,
    data: str | os.PathLike | None = None,
    split: str | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Evaluate a trained model on a dataset (default: the recipe's eval_data).

    Named classes (folders, npz ``classes``, ClassLabel) are matched to the model's by name (unknown
    names: DataError naming them); unnamed labels by position. The result adds ``classes`` (the model's)
    and ``no_examples`` (those classes the data holds no example of; their per-class entry is None).
    """
    path = resolve_path(data) if data is not None else resolve_path(trained.recipe.eval_data)
    if path is None:
        raise DataError("no evaluation data: pass a dataset path (the recipe has no eval_data)")
    source = open_source(path, split or trained.recipe.eval_split or "test", trained.recipe.bad_images)
    source = align_classes(source, trained.classes)
    loader = DataLoader(
        TransformedDataset(source, Preprocess(trained.recipe, train=False)), batch_size=batch_size
    )
    meter = ClassificationMeter(len(trained.classes))
    for images, labels in loader:
        logits = trained.model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        meter.update(logits, labels, float(loss))
    metrics = meter.compute()
    metrics["classes"] = list(trained.classes)
    metrics["no_examples"] = classes_without_examples(source, trained.classes)
    return metrics


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


def predict_files(
    trained: TrainedModel, files: list[Path], topk: int = 5, skip_bad: bool = False
) -> list[dict[str, Any]]:
    """Top-k (class, probability) for each image file; see iter_predictions for ``skip_bad``."""
    return list(iter_predictions(trained, files, topk, skip_bad))


@torch.no_grad()
def iter_predictions(
    trained: TrainedModel, files: list[Path], topk: int = 5, skip_bad: bool = False
) -> Iterator[dict[str, Any]]:
    """Yield {"file", "top": [(class, probability)]} per image as it is predicted.

    An unreadable file raises DataError naming it and ``--skip-bad``; with ``skip_bad`` it yields
    {"file", "error"} instead and goes on.
    """
    from PIL import Image

    pre = Preprocess(trained.recipe, train=False)
    k = min(topk, len(trained.classes))
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                x = pre(img.copy())
        except Exception as exc:
            why = " ".join(str(exc).replace(f" '{path}'", "").split()) or type(exc).__name__
            if skip_bad:
                yield {"file": str(path), "error": f"cannot read image: {why}"}
                continue
            raise DataError(
                f"cannot read image {path}: {why}; pass --skip-bad to report unreadable images and go on"
            ) from None
        probs = trained.model(x[None]).float().softmax(dim=1)[0]
        values, idx = probs.topk(k)
        yield {
            "file": str(path),
            "top": [(trained.classes[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())],
        }
