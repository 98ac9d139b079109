"""Semantic segmentation: UPerNet (segmentation_models_pytorch 0.6) on a VMamba / Mamba-Adaptor pyramid.

`segmentation_model` builds `smp.UPerNet(encoder_name="tu-<name>")`: smp's timm-universal encoder creates
our timm model with `features_only=True` (strides 4-32, so smp treats it as transformer-style and adds an
empty stride-2 level). By default the encoder's feature getter is then swapped for a `VMambaBackbone`
around the same weights, which adds the per-level norms `outnorm{i}` of the official mmseg backbone and
loads classification checkpoints with a key report. Multi-scale + flip inference follows mmseg's
aug-test: average the softmax over scales (0.5-1.75 as in the paper's supplementary) and flips.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors

from .metrics import SegmentationMetric
from .pyramid import as_adaptor_config, ensure_registered, prepare_pyramid, pyramid_from_vssm

__all__ = [
    "MS_SCALES",
    "evaluate_segmentation",
    "multiscale_inference",
    "segmentation_model",
]

#: The supplementary's multi-scale test ratios (0.5x-1.75x of the training resolution).
MS_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def segmentation_model(
    backbone: str = "mamba_adaptor_b2",
    num_classes: int = 150,
    *,
    checkpoint: str | os.PathLike | None = None,
    adaptor: MambaAdaptorConfig | dict[str, Any] | None = None,
    freeze_base: bool = True,
    decoder_channels: int = 512,
    pyramid_norm: bool = True,
    trust_pickle: bool = False,
    **backbone_kwargs: Any,
) -> nn.Module:
    """UPerNet with a VMamba / Mamba-Adaptor encoder, as an `smp.UPerNet`.

    backbone: any registered VMamba or Mamba-Adaptor name. checkpoint: classification weights for the
    backbone (head ignored; needs pyramid_norm). adaptor: inject adaptors (PEFT: with freeze_base only the
    adaptors, pyramid norms, decoder and head train). decoder_channels 512 = mmseg's UPerHead.
    backbone_kwargs go to the timm constructor (drop_path_rate=..., ...).
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError(
            "segmentation_model needs segmentation-models-pytorch: pip install 'adaptor_peft[dense]'"
        ) from exc
    ensure_registered()
    model = smp.UPerNet(
        encoder_name=f"tu-{backbone}",
        encoder_weights=None,
        encoder_depth=5,
        decoder_channels=decoder_channels,
        classes=num_classes,
        **backbone_kwargs,
    )
    if pyramid_norm:
        getter = model.encoder.model  # timm FeatureGetterNet around our VSSM
        model.encoder.model = prepare_pyramid(
            pyramid_from_vssm(getter.model), checkpoint, adaptor, freeze_base, trust_pickle
        )
    else:
        if checkpoint is not None:
            raise ValueError("checkpoint loading needs pyramid_norm=True (the VMambaBackbone wrapper)")
        if adaptor is not None:
            inject_adaptors(model.encoder.model.model, as_adaptor_config(adaptor), freeze_base=freeze_base)
    return model


def _pad_to(x: torch.Tensor, divisor: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


@torch.no_grad()
def multiscale_inference(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = MS_SCALES,
    flip: bool = True,
    size_divisor: int = 32,
) -> torch.Tensor:
    """Class probabilities (B, C, H, W) at the input resolution, averaged over scales and flips.

    Each scale resizes the batch (bilinear), pads bottom/right to a multiple of size_divisor (VMamba and
    UPerNet need stride-32 tiling), runs the model, crops the padding off, and resizes the logits back;
    the softmax is averaged (mmseg's aug-test). scales=(1.0,), flip=False is single-scale inference.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales is empty: give at least one scale, e.g. (1.0,)")
    h, w = images.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"scales must be positive, got {scale}")
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        x = (
            images
            if (sh, sw) == (h, w)
            else F.interpolate(images, (sh, sw), mode="bilinear", align_corners=False)
        )
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = model(_pad_to(xi, size_divisor))[..., :sh, :sw]
            if flipped:
                logits = logits.flip(-1)
            if (sh, sw) != (h, w):
                logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
            count += 1
    assert total is not None
    return total / count


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    ignore_index: int | None = 255,
    device: torch.device | str | None = None,
) -> dict[str, float | list[float]]:
    """mIoU / mAcc / aAcc over (images, masks) batches; scales=(1.0,) single-scale, MS_SCALES + flip multi."""
    was_training = model.training
    model.eval()
    metric = SegmentationMetric(num_classes, ignore_index)
    try:
        for images, masks in batches:
            if device is not None:
                images = images.to(device)
            probs = multiscale_inference(model, images, scales=scales, flip=flip)
            metric.update(probs.argmax(1).cpu(), masks.cpu())
    finally:
        model.train(was_training)
    return metric.compute()
