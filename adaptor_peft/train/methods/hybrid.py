"""The ``hybrid`` method: Mamba-Adaptor (Adaptor-T + Adaptor-S) plus LoRA on the SS2D projections.

MambaPEFT found hybrids of PEFT methods best on Vim; this one stacks the paper's adaptors (from the
recipe's ``adaptor`` mapping, as method ``adaptor``) and the ``lora`` baseline (from
``method_options``: r, alpha, dropout, targets; default ``op.in_proj`` / ``op.out_proj``) on one frozen
base. What trains: the adaptors, what the adaptor config trains besides (head, norms, biases,
modules_to_save), and the LoRA factors. The artefact is one safetensors file of exactly those
tensors, with the adaptor config and the LoRA options in its metadata; loading checks both against
the prepared model and needs exactly the trained names and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ...adaptors import MambaAdaptorConfig, inject_adaptors
from ..recipes import Recipe, RecipeError
from .adaptor import adaptor_config
from .base import Method, load_tensors_strict, save_tensors, trainable_state
from .baselines import apply_lora, lora_options

META_ADAPTOR_CONFIG = "adaptor_config"
META_LORA = "lora"


def prepare_hybrid(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Inject the recipe's adaptors, then LoRA on its targets; adaptors, their extras and LoRA train."""
    if recipe.base_lr is not None:
        raise RecipeError(
            "method 'hybrid' trains adaptors and LoRA on a frozen base; recipe key 'base_lr' does not "
            "apply (use method 'adaptor' with base_lr for the booster)"
        )
    config = adaptor_config(recipe)
    lora = lora_options(recipe)  # checked before anything is injected
    inject_adaptors(model, config, freeze_base=True)
    # By identity: LoRA wraps in_proj/out_proj, which renames a trained bias there (train_biases).
    adaptor_side = [p for p in model.parameters() if p.requires_grad]
    apply_lora(model, lora["r"], lora["alpha"], lora["dropout"], lora["targets"])
    for p in adaptor_side:
        p.requires_grad_(True)
    model.hybrid_lora_options = lora
    return model


def _lora_meta(model: nn.Module) -> dict[str, Any]:
    options = dict(getattr(model, "hybrid_lora_options", {}))
    options["targets_matched"] = list(getattr(model, "lora_targets", []))
    return options


def save_hybrid(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Write every trained tensor (adaptors, extras, LoRA factors) with both parts' settings."""
    config = getattr(model, "adaptor_config", None)
    if config is None:
        raise ValueError("save_hybrid: the model has no adaptors; prepare it with method 'hybrid' first")
    meta = {
        **meta,
        "method": "hybrid",
        META_ADAPTOR_CONFIG: config.to_dict(),
        META_LORA: _lora_meta(model),
    }
    return save_tensors(trainable_state(model), path, meta)


def load_hybrid(model: nn.Module, path: Path) -> nn.Module:
    """Load a hybrid file into a model prepared with the same recipe (config and LoRA options checked)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    config = getattr(model, "adaptor_config", None)
    if config is None:
        raise ValueError(f"{path}: the model has no adaptors; prepare it with method 'hybrid' first")
    stored_config = _meta_json(meta, META_ADAPTOR_CONFIG, path)
    try:  # from_dict fills fields added since the file was written with their defaults
        stored_config = MambaAdaptorConfig.from_dict(stored_config).to_dict()
    except ValueError as exc:
        raise ValueError(f"{path}: metadata key '{META_ADAPTOR_CONFIG}' is invalid: {exc}") from None
    _check_same(path, META_ADAPTOR_CONFIG, stored_config, config.to_dict())
    _check_same(path, META_LORA, _meta_json(meta, META_LORA, path), _lora_meta(model))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    return load_tensors_strict(model, path, expected)


def _meta_json(meta: dict[str, str], key: str, path: Path) -> dict[str, Any]:
    if key not in meta:
        raise ValueError(f"{path}: metadata key '{key}' is missing: not a 'hybrid' method file")
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata key '{key}' is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: metadata key '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def _check_same(path: Path, key: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    current = json.loads(json.dumps(current))  # tuples -> lists, as stored
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if diff:
        raise ValueError(
            f"{path}: saved with {key} {', '.join(f'{k}={stored.get(k)!r}' for k in diff)} but the model "
            f"was prepared with {', '.join(f'{k}={current.get(k)!r}' for k in diff)}: prepare it with the "
            "recipe that trained the file"
        )


HYBRID_METHOD = Method("hybrid", prepare_hybrid, save_hybrid, load_hybrid, "hybrid.safetensors")
