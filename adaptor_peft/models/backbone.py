"""Dense-task backbone: a VMamba / Mamba-Adaptor trunk that returns a normed 4-level feature pyramid.

Mirrors the official `Backbone_VSSM` (mmdet/mmseg): the classifier is dropped, each requested stage's
block output (before its downsample) goes through its own norm `outnorm{i}` and comes out channel-first
(B, C_i, H/s_i, W/s_i) with strides s_i = 4, 8, 16, 32. The state-dict keys are the classification keys
minus `classifier.*` plus `outnorm{i}.*`, so a classification checkpoint loads with exactly those two
differences reported, and an mmdet/mmseg checkpoint (`backbone.` prefix) loads completely.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .vmamba import VSSM, VSSBlock

__all__ = ["BackboneLoadReport", "VMambaBackbone"]


@dataclass
class BackboneLoadReport:
    """Outcome of loading a classification checkpoint into a backbone."""

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)  # backbone keys the file lacks (normally outnorm*)
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone lacks, head excluded
    ignored: list[str] = field(default_factory=list)  # classifier.* keys, dropped on purpose

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        lines = [f"loaded {self.loaded} tensors from {self.source}"]
        lines.append(f"missing keys ({len(self.missing)}): {show(self.missing) or '-'}")
        lines.append(f"unexpected keys ({len(self.unexpected)}): {show(self.unexpected) or '-'}")
        lines.append(f"ignored classifier keys ({len(self.ignored)}): {show(self.ignored) or '-'}")
        return "\n".join(lines)


class VMambaBackbone(nn.Module):
    """Feature-pyramid backbone around a VSSM (plain VMamba or Mamba-Adaptor b1/b2).

    model: a built VSSM, or a registered model name (built with `**create_kwargs`, random weights).
    out_indices: which stages to return (0..3). forward(x) -> list of (B, C_i, H_i, W_i) tensors.
    Attributes: `out_channels`, `strides` (per returned level), `channel_first`.
    """

    def __init__(
        self,
        model: VSSM | str,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        **create_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(model, str):
            import timm

            from . import mamba_adaptor  # noqa: F401  (registers the b1/b2 family)

            model = timm.create_model(model, **create_kwargs)
        elif create_kwargs:
            raise TypeError(f"create kwargs {sorted(create_kwargs)} only apply when model is a name")
        if not isinstance(model, VSSM):
            raise TypeError(f"VMambaBackbone wraps a VSSM (or a registered name), got {type(model).__name__}")
        num_stages = len(model.layers)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices:
            raise ValueError("out_indices is empty: give at least one stage index")
        for i in out_indices:
            if not 0 <= i < num_stages:
                raise ValueError(f"out_indices holds {i}, outside the model's stages 0..{num_stages - 1}")
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f"out_indices must be increasing and unique, got {out_indices}")
        self.out_indices = out_indices
        self.channel_first = model.channel_first
        self.dims = list(model.dims)
        self.arch_name = getattr(model, "arch_name", None)
        self.model_config = dict(getattr(model, "model_config", {}))
        if getattr(model, "adaptor_config", None) is not None:
            self.adaptor_config = model.adaptor_config
        # Same attribute names as VSSM / Backbone_VSSM, so the state-dict keys match the official ones.
        self.patch_embed = model.patch_embed
        self.pos_embed = model.pos_embed
        self.layers = model.layers
        norm_cls = type(model.classifier.norm)
        for i in out_indices:
            self.add_module(f"outnorm{i}", norm_cls(self.dims[i]))
        self.out_channels = [self.dims[i] for i in out_indices]
        self.strides = [model.patch_size * 2**i for i in out_indices]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (saves activation memory at high resolution)."""
        for m in self.modules():
            if isinstance(m, VSSBlock):
                m.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [normed stage-i output as (B, C_i, H/s_i, W/s_i) for i in out_indices]."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + (self.pos_embed if self.channel_first else self.pos_embed.permute(0, 2, 3, 1))
        outs = []
        last = self.out_indices[-1]
        for i, layer in enumerate(self.layers):
            x = layer.blocks(x)
            if i in self.out_indices:
                out = getattr(self, f"outnorm{i}")(x)
                if not self.channel_first:
                    out = out.permute(0, 3, 1, 2)
                outs.append(out.contiguous())
            if i == last:  # the deeper stages would only be computed to be thrown away
                break
            x = layer.downsample(x)
        return outs

    def load_classification_checkpoint(
        self, path: str | os.PathLike, trust_pickle: bool = False, verbose: bool = True
    ) -> BackboneLoadReport:
        """Load a classification (or mmdet/mmseg) checkpoint; the head is ignored; returns what differed.

        Shape mismatches raise CheckpointMismatchError naming the key; missing keys (normally the
        `outnorm*` norms, which keep their init) and unexpected ones are reported, not fatal.
        """
        from .checkpoint import CheckpointMismatchError, checkpoint_budget, load_checkpoint

        budget = checkpoint_budget(sum(p.numel() for p in self.parameters()))  # slack covers the head
        state = load_checkpoint(path, trust_pickle=trust_pickle, max_bytes=budget)
        expected = self.state_dict()
        ignored = [k for k in state if k.startswith("classifier.")]
        unexpected = [k for k in state if k not in expected and not k.startswith("classifier.")]
        missing = [k for k in expected if k not in state]
        bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if bad:
            key = bad[0]
            raise CheckpointMismatchError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, the backbone "
                f"({self.arch_name or 'VSSM'}) expects {tuple(expected[key].shape)} ({len(bad)} tensor(s) "
                "differ in shape): the checkpoint is for another model size"
            )
        loadable = {k: v for k, v in state.items() if k in expected}
        self.load_state_dict(loadable, strict=False)
        report = BackboneLoadReport(str(path), len(loadable), missing, unexpected, ignored)
        if verbose:
            print(report)
        return report
