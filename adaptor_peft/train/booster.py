"""Booster mode (paper usage b): optimizer parameter groups with a small LR for the pretrained base.

Booster = adaptors inserted into a pretrained VMamba (`inject_adaptors(model, cfg, freeze_base=False)`),
then everything fine-tuned: the pretrained weights with a small learning rate, the fresh adaptors with
a larger one. Norm weights, biases, the SSM's A_logs / Ds, the adaptor scales (gamma) and static offsets
get no weight decay (timm's rule: 1-D tensors and biases, plus the 2-D `dt_projs_bias` and adaptor
biases, which are biases too).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["booster_param_groups", "is_adaptor_param", "no_decay_param_names"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_NO_DECAY_SUFFIXES = (".bias", "_bias", ".gamma", ".static_offsets", ".A_logs", ".Ds", "pos_embed")


def is_adaptor_param(name: str) -> bool:
    """True for parameters of injected Adaptor-T / Adaptor-S (`...op.adaptor_t.*` / `...op.adaptor_s.*`)."""
    return ".adaptor_t." in name or ".adaptor_s." in name or name.startswith(("adaptor_t.", "adaptor_s."))


def no_decay_param_names(model: nn.Module) -> set[str]:
    """Names of parameters that take no weight decay: norms, biases, 1-D tensors, SSM A/D, adaptor scales."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    extra = getattr(model, "no_weight_decay", None)
    if callable(extra):
        names.update(extra())
    for name, param in model.named_parameters():
        if param.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES):
            names.add(name)
    return names


def booster_param_groups(
    model: nn.Module,
    base_lr: float,
    adaptor_lr: float,
    weight_decay: float,
    head_lr: float | None = None,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW-ready groups: base / adaptor (/ head) x decay / no-decay, trainable parameters only.

    base_lr applies to the pretrained weights, adaptor_lr to the adaptor modules, head_lr (default
    base_lr) to the classifier head, e.g. a larger one when the head is new. layer_decay (optional, e.g.
    0.8) further scales the base LR by layer_decay ** (depth from the top) along the model's timm
    `group_matcher` (stem lowest, last block and head norm at base_lr). Empty groups are left out; each
    group carries a `group_name` such as "adaptor_no_decay" (or "base_decay_layer3" with layer_decay).
    """
    for label, value in (("base_lr", base_lr), ("adaptor_lr", adaptor_lr), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise ValueError(f"booster_param_groups: {label} must be >= 0, got {value!r}")
    if head_lr is not None and not head_lr >= 0:
        raise ValueError(f"booster_param_groups: head_lr must be >= 0, got {head_lr!r}")
    no_decay = no_decay_param_names(model)
    head_names: set[str] = set()
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    if isinstance(head, nn.Module):
        head_ids = {id(p) for p in head.parameters()}
        head_names = {n for n, p in model.named_parameters() if id(p) in head_ids}
    lrs = {"base": base_lr, "adaptor": adaptor_lr, "head": base_lr if head_lr is None else head_lr}
    layer_of, layer_max = _layer_map(model, layer_decay, exclude=head_names)
    buckets: dict[tuple[str, int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = "adaptor" if is_adaptor_param(name) else "head" if name in head_names else "base"
        layer = layer_of.get(name, layer_max) if kind == "base" else -1
        buckets.setdefault((kind, layer, name in no_decay), []).append(param)
    if not buckets:
        raise ValueError(f"booster_param_groups: {type(model).__name__} has no trainable parameters")
    groups = []
    order = {"base": 0, "head": 1, "adaptor": 2}
    for kind, layer, nd in sorted(buckets, key=lambda b: (order[b[0]], b[1], b[2])):
        lr = lrs[kind]
        name = f"{kind}_{'no_decay' if nd else 'decay'}"
        if layer >= 0 and layer_decay is not None:
            lr = lr * layer_decay ** (layer_max - layer)
            name += f"_layer{layer}"
        groups.append(
            {
                "params": buckets[(kind, layer, nd)],
                "lr": lr,
                "weight_decay": 0.0 if nd else weight_decay,
                "group_name": name,
            }
        )
    return groups


def _layer_map(model: nn.Module, layer_decay: float | None, exclude: set[str]) -> tuple[dict[str, int], int]:
    """Parameter name -> layer id along the model's timm group_matcher, and the top id outside `exclude`."""
    if layer_decay is None:
        return {}, 0
    if not 0 < layer_decay <= 1:
        raise ValueError(f"booster_param_groups: layer_decay must be in (0, 1], got {layer_decay!r}")
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise ValueError(
            f"booster_param_groups: layer_decay needs group_matcher(), which {type(model).__name__} lacks"
        )
    from timm.models import group_parameters

    layer_of = group_parameters(model, matcher(coarse=False), reverse=True)
    return layer_of, max(v for k, v in layer_of.items() if k not in exclude)
