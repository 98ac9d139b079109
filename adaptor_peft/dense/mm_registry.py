"""Optional registration of our backbone with MMDetection / mmsegmentation (never a hard dependency).

After `register_mm_backbones()` an mmdet or mmseg config can say

    model = dict(backbone=dict(type="MambaAdaptorPyramid", arch="mamba_adaptor_b2", out_indices=(0, 1, 2, 3),
                               drop_path_rate=0.2, pretrained="b2_in1k.safetensors"))

(see recipes/mm/). The class returns a tuple of (B, C_i, H/s_i, W/s_i) maps like the official
`MM_VSSM` backbone, with per-level norms `outnorm{i}`; `pretrained` loads a classification checkpoint
(head ignored, missing/unexpected keys reported) in `init_weights`, which mmengine calls after building;
`adaptor` injects Mamba-Adaptor modules for PEFT (at construction, so the optimizer sees them).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
import torch.nn as nn

__all__ = ["MM_BACKBONE_NAME", "MambaAdaptorPyramid", "register_mm_backbones"]

MM_BACKBONE_NAME = "MambaAdaptorPyramid"


class MambaAdaptorPyramid(nn.Module):
    """mm-style backbone: `arch` (registered name) -> tuple of normed pyramid levels."""

    def __init__(
        self,
        arch: str = "mamba_adaptor_b2",
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        pretrained: str | os.PathLike | None = None,
        adaptor: dict[str, Any] | None = None,
        freeze_base: bool = True,
        init_cfg: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        from .pyramid import build_pyramid, prepare_pyramid

        if init_cfg is not None and pretrained is None and init_cfg.get("type") == "Pretrained":
            pretrained = init_cfg.get("checkpoint")
        self.pretrained = pretrained
        self.adaptor = adaptor
        self.freeze_base = freeze_base
        self.body = build_pyramid(arch, tuple(out_indices), **model_kwargs)
        # Adaptors go in now, not in init_weights: mmengine builds the optimizer before init_weights.
        prepare_pyramid(self.body, None, adaptor, freeze_base)
        self._loaded = False

    def init_weights(self) -> None:
        """Load `pretrained` (if any) once; adaptor keys show up as missing there (they keep their init)."""
        if self._loaded or self.pretrained is None:
            return
        self.body.load_classification_checkpoint(self.pretrained)
        self._loaded = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> tuple of (B, C_i, H/s_i, W/s_i)."""
        return tuple(self.body(x))


def register_mm_backbones(force: bool = False) -> list[str]:
    """Register MambaAdaptorPyramid in the MODELS registry of each importable mm package; returns them."""
    done = []
    for package in ("mmdet", "mmseg"):
        try:
            registry = importlib.import_module(f"{package}.registry").MODELS
        except ImportError:  # the package (or its registry) is not installed: nothing to do
            continue
        registry.register_module(name=MM_BACKBONE_NAME, module=MambaAdaptorPyramid, force=force)
        done.append(package)
    return done
