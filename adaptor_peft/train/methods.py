"""Training methods (what is trainable, and what the final artefact is), as a small registry.

A method decides which parameters train and how the trained result is saved and loaded back. Add a
baseline with ``register_method(Method(name, prepare, save, load, artefact))``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_write_bytes
from .recipes import Recipe, RecipeError

if TYPE_CHECKING:  # torch is imported lazily so that recipe validation (and CLI errors) stay fast
    import torch
    from torch import nn


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
    """Add (or replace) a method in the registry."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """Look a method up by name (RecipeError listing the known ones otherwise)."""
    if name not in METHODS:
        raise RecipeError(f"unknown method '{name}'; known methods: {sorted(METHODS)}")
    return METHODS[name]


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head (timm ``get_classifier``), e.g. ``classifier.head`` for VMamba."""
    from torch import nn

    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module):
            return head
    for name in ("head", "fc", "classifier"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"cannot find the classifier head of {type(model).__name__}")


def head_param_names(model: nn.Module) -> set[str]:
    """Fully qualified names of the head's parameters."""
    head_ids = {id(p) for p in head_module(model).parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}


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


# --- adaptor ----------------------------------------------------------------------------------


def adaptor_config(recipe: Recipe) -> Any:
    """MambaAdaptorConfig from the recipe's ``adaptor`` mapping (unknown fields: a clear RecipeError)."""
    import dataclasses
    import difflib

    from adaptor_peft.adaptors import MambaAdaptorConfig

    fields = (
        [f.name for f in dataclasses.fields(MambaAdaptorConfig)]
        if dataclasses.is_dataclass(MambaAdaptorConfig)
        else []
    )
    for key in recipe.adaptor:
        if fields and key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean 'adaptor.{close[0]}'?" if close else ""
            raise RecipeError(f"unknown adaptor key 'adaptor.{key}'{hint} valid keys: {', '.join(fields)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.adaptor.items()}
    try:
        return MambaAdaptorConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid adaptor config {recipe.adaptor}: {exc}") from None


def _prepare_adaptor(model: nn.Module, recipe: Recipe) -> nn.Module:
    from adaptor_peft.adaptors import inject_adaptors

    return inject_adaptors(model, adaptor_config(recipe), freeze_base=recipe.base_lr is None)


def _save_adaptor(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    from adaptor_peft.io import save_adaptors

    return save_adaptors(model, path, include_head=True, metadata=meta)


def _load_adaptor(model: nn.Module, path: Path) -> nn.Module:
    from adaptor_peft.io import load_adaptors

    return load_adaptors(model, path, strict=True)


# --- linear probe / full ----------------------------------------------------------------------


def _prepare_linear_probe(model: nn.Module, recipe: Recipe) -> nn.Module:
    head = head_param_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    return model


def _save_trainable(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    return save_tensors(trainable_state(model), path, meta)


def _load_head(model: nn.Module, path: Path) -> nn.Module:
    return load_tensors_strict(model, path, head_param_names(model))


def _prepare_full(model: nn.Module, recipe: Recipe) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _save_full(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta)
    config = getattr(model, "model_config", None)
    if isinstance(config, Mapping):  # same "config" metadata field as convert_checkpoint writes
        meta["config"] = dict(config)
    arch = getattr(model, "arch_name", None)
    if arch:
        meta["arch"] = arch
    return save_tensors(tensors, path, meta)


def _load_full(model: nn.Module, path: Path) -> nn.Module:
    return load_tensors_strict(model, path, set(model.state_dict()))


register_method(Method("adaptor", _prepare_adaptor, _save_adaptor, _load_adaptor, "adaptor.safetensors"))
register_method(
    Method("linear_probe", _prepare_linear_probe, _save_trainable, _load_head, "head.safetensors")
)
register_method(Method("full", _prepare_full, _save_full, _load_full, "model.safetensors"))


def artefact_path(run_dir: str | os.PathLike, method: str) -> Path:
    """Where a run of ``method`` stores its final artefact."""
    return Path(run_dir) / get_method(method).artefact


# The baselines (LoRA, partial tuning, adaptor variants) register themselves into METHODS.
from adaptor_peft import baselines as _baselines  # noqa: E402,F401
