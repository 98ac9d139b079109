"""The method registry and what every method shares: parameter naming, safetensors save and strict load.

A method decides which parameters train and how the trained result is saved and loaded back. Add one
with ``register_method(Method(name, prepare, save, load, artefact))``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...adaptors.selection import head_module as find_head_module
from ...atomic import atomic_write_bytes
from ..recipes import Recipe, RecipeError, allow_method_name


@dataclass(frozen=True)
class Method:
    """A training method: ``prepare`` sets requires_grad (and may insert modules); save/load the result."""

    name: str
    prepare: Callable[[nn.Module, Recipe], nn.Module]
    save: Callable[[nn.Module, Path, dict[str, Any]], Path]
    load: Callable[[nn.Module, Path], nn.Module]
    artefact: str  # file name of the final result inside the run directory


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add (or replace) a method in the registry; recipes accept its name from then on."""
    METHODS[method.name] = method
    allow_method_name(method.name)
    return method


def get_method(name: str) -> Method:
    """Look a method up by name (RecipeError listing the known ones otherwise)."""
    if name not in METHODS:
        raise RecipeError(f"unknown method '{name}'; known methods: {sorted(METHODS)}")
    return METHODS[name]


def artefact_path(run_dir: str | os.PathLike, method: str) -> Path:
    """Where a run of ``method`` stores its final artefact."""
    return Path(run_dir) / get_method(method).artefact


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head (timm ``get_classifier``, e.g. ``classifier.head``); ValueError if none."""
    head = find_head_module(model)
    if head is None:
        raise ValueError(f"cannot find the classifier head of {type(model).__name__}")
    return head


def head_param_names(model: nn.Module) -> set[str]:
    """Fully qualified names of the head's parameters."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}


def set_trainable(model: nn.Module, names: set[str] | list[str]) -> nn.Module:
    """requires_grad on exactly ``names`` plus the head; everything else frozen."""
    wanted = set(names) | head_param_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters (cloned to CPU) by name."""
    return {
        n: p.detach().to("cpu", copy=True).contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _string_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, meta: Mapping[str, Any]) -> Path:
    """Write a safetensors file atomically with JSON-encoded metadata values."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save(dict(tensors), metadata=_string_metadata(meta)))


def save_trainable(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Save the trainable parameters (what a method that freezes the rest trained)."""
    return save_tensors(trainable_state(model), path, meta)


def load_tensors_strict(model: nn.Module, path: Path, expected: set[str]) -> nn.Module:
    """Load tensors into the model; the file must hold exactly ``expected`` keys with matching shapes."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    own = model.state_dict()
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"{path}: tensor '{k}' has shape {list(v.shape)}, model expects {list(own[k].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return model
