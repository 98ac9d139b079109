"""The paper's method (Mamba-Adaptor) and the two classic references: linear probing and full fine-tuning."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ...adaptors import MambaAdaptorConfig, inject_adaptors
from ...io import load_adaptors, save_adaptors
from ..recipes import Recipe, RecipeError, did_you_mean
from .base import Method, head_param_names, load_tensors_strict, save_tensors, save_trainable


def adaptor_config(recipe: Recipe) -> MambaAdaptorConfig:
    """MambaAdaptorConfig from the recipe's ``adaptor`` mapping (unknown fields: a clear RecipeError)."""
    fields = [f.name for f in dataclasses.fields(MambaAdaptorConfig)]
    for key in recipe.adaptor:
        if key not in fields:
            hint = did_you_mean(key, fields, prefix="adaptor.")
            raise RecipeError(f"unknown adaptor key 'adaptor.{key}'{hint} valid keys: {', '.join(fields)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.adaptor.items()}
    try:
        return MambaAdaptorConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid adaptor config {recipe.adaptor}: {exc}") from None


def prepare_adaptor(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Inject the recipe's adaptors; the base stays frozen unless the recipe gives it a rate (booster)."""
    return inject_adaptors(model, adaptor_config(recipe), freeze_base=recipe.base_lr is None)


def save_adaptor(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Write the adaptor file (adaptors plus head), the format ``adaptor_peft.io`` documents."""
    return save_adaptors(model, path, include_head=True, metadata=meta)


def load_adaptor(model: nn.Module, path: Path) -> nn.Module:
    """Load an adaptor file into a model that has the same adaptors injected."""
    return load_adaptors(model, path, strict=True)


def prepare_linear_probe(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Train the classifier head only."""
    head = head_param_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    return model


def load_head(model: nn.Module, path: Path) -> nn.Module:
    """Load a linear probe's head file."""
    return load_tensors_strict(model, path, head_param_names(model))


def prepare_full(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Train every parameter."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_full(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Write the whole state dict, with the model's config and arch name as metadata."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta)
    config = getattr(model, "model_config", None)
    if isinstance(config, Mapping):  # same "config" metadata field as convert_checkpoint writes
        meta["config"] = dict(config)
    arch = getattr(model, "arch_name", None)
    if arch:
        meta["arch"] = arch
    return save_tensors(tensors, path, meta)


def load_full(model: nn.Module, path: Path) -> nn.Module:
    """Load a full fine-tuning result (every key of the model's state dict)."""
    return load_tensors_strict(model, path, set(model.state_dict()))


ADAPTOR_METHODS: tuple[Method, ...] = (
    Method("adaptor", prepare_adaptor, save_adaptor, load_adaptor, "adaptor.safetensors"),
    Method("linear_probe", prepare_linear_probe, save_trainable, load_head, "head.safetensors"),
    Method("full", prepare_full, save_full, load_full, "model.safetensors"),
)
