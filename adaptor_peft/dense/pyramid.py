"""Shared backbone plumbing for the dense heads: build a normed VMamba / Mamba-Adaptor pyramid, load a
classification checkpoint into it, and inject adaptors for PEFT (base frozen, pyramid norms trainable).
"""

from __future__ import annotations

import os
from typing import Any

import torch.nn as nn

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.models.backbone import VMambaBackbone
from adaptor_peft.models.vmamba import VSSM

__all__ = ["as_adaptor_config", "build_pyramid", "ensure_registered", "pyramid_from_vssm", "prepare_pyramid"]


def ensure_registered() -> None:
    """Register the VMamba and Mamba-Adaptor families with timm (idempotent)."""
    from adaptor_peft.models import mamba_adaptor, vmamba  # noqa: F401


def as_adaptor_config(adaptor: MambaAdaptorConfig | dict[str, Any] | None) -> MambaAdaptorConfig | None:
    """None, a MambaAdaptorConfig or a dict of its fields -> a config (or None)."""
    if adaptor is None or isinstance(adaptor, MambaAdaptorConfig):
        return adaptor
    if isinstance(adaptor, dict):
        return MambaAdaptorConfig.from_dict(dict(adaptor))
    raise TypeError(f"adaptor must be a MambaAdaptorConfig, a dict or None, got {type(adaptor).__name__}")


def _block_norm_type(vssm: VSSM) -> type[nn.Module]:
    for module in vssm.layers.modules():
        norm = getattr(module, "norm", None)
        if isinstance(norm, nn.LayerNorm):  # LayerNorm2d subclasses it
            return type(norm)
    raise TypeError(f"{type(vssm).__name__}: no LayerNorm found in the blocks to build the pyramid norms")


def pyramid_from_vssm(vssm: VSSM, out_indices: tuple[int, ...] = (0, 1, 2, 3)) -> VMambaBackbone:
    """Wrap a VSSM (also one timm pruned for features_only, whose head norm is gone) as a normed pyramid."""
    if not isinstance(getattr(vssm.classifier, "norm", None), nn.LayerNorm):
        # timm's FeatureGetterNet prunes the head norm; VMambaBackbone copies its type for outnorm{i}.
        vssm.classifier.norm = _block_norm_type(vssm)(vssm.dims[-1])
    return VMambaBackbone(vssm, out_indices=out_indices)


def build_pyramid(
    name: str, out_indices: tuple[int, ...] = (0, 1, 2, 3), **model_kwargs: Any
) -> VMambaBackbone:
    """A registered model name (random init) -> normed 4-level pyramid (the classifier is not kept)."""
    import timm

    ensure_registered()
    vssm = timm.create_model(name, num_classes=0, **model_kwargs)
    if not isinstance(vssm, VSSM):
        raise TypeError(f"model {name!r} is a {type(vssm).__name__}, not a VMamba/Mamba-Adaptor VSSM")
    return pyramid_from_vssm(vssm, out_indices)


def prepare_pyramid(
    pyramid: VMambaBackbone,
    checkpoint: str | os.PathLike | None = None,
    adaptor: MambaAdaptorConfig | dict[str, Any] | None = None,
    freeze_base: bool = True,
    trust_pickle: bool = False,
) -> VMambaBackbone:
    """Load a classification checkpoint (head ignored, report printed), then inject adaptors (PEFT).

    With adaptors and freeze_base the VMamba weights are frozen; the adaptors and the new pyramid norms
    `outnorm{i}` (randomly initialised, so they must learn) stay trainable.
    """
    if checkpoint is not None:
        pyramid.load_classification_checkpoint(checkpoint, trust_pickle=trust_pickle)
    config = as_adaptor_config(adaptor)
    if config is not None:
        if getattr(pyramid, "adaptor_config", None) is not None:
            raise ValueError(
                f"backbone {pyramid.arch_name!r} already has adaptors built in (a Mamba-Adaptor b-model); "
                "pass adaptor=None, or freeze parts of it yourself"
            )
        inject_adaptors(pyramid, config, freeze_base=freeze_base)
        for i in pyramid.out_indices:
            getattr(pyramid, f"outnorm{i}").requires_grad_(True)
    return pyramid
