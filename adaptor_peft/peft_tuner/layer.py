"""The peft tuner layer: a container on an SS2D hook (op.adaptor_t / op.adaptor_s) holding named adaptors.

It sits *in* the hook instead of wrapping a base layer, so no base parameter is renamed. Adapter
keys look like ``layers.0.blocks.1.op.adaptor_t.mamba_adaptor_modules.<adapter>.phi_c.weight``.
Disabled (or no active adapter here): Adaptor-T contributes exactly zero, Adaptor-S is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from adaptor_peft.adaptors import AdaptorS, AdaptorT, MambaAdaptorConfig

# The ModuleDict attribute; must start with the tuner prefix "mamba_adaptor_" (peft filters keys by it).
ADAPTOR_MODULES = "mamba_adaptor_modules"
HOOKS = {"temporal": "adaptor_t", "spatial": "adaptor_s"}

MERGE_ERROR = (
    "Mamba-Adaptor cannot be merged into the base weights: Adaptor-T adds a read-out of extra memory "
    "sampled from the selective scan's hidden states, and Adaptor-S adds dilated depthwise convolutions "
    "after cross-merge; neither is a delta of an existing base weight. Keep the PeftModel (or use "
    "adaptor_peft.save_adaptors / load_adaptors), or call unload() to drop the adaptors."
)


class MambaAdaptorLayer(nn.Module, BaseTunerLayer):
    """Named Adaptor-T (kind "temporal") or Adaptor-S (kind "spatial") modules for one SS2D block."""

    adapter_layer_names = (ADAPTOR_MODULES,)

    def __init__(
        self, kind: str, op: nn.Module, adapter_name: str, config: MambaAdaptorConfig, **kw: Any
    ) -> None:
        super().__init__()
        if kind not in HOOKS:
            raise ValueError(f"MambaAdaptorLayer kind must be one of {sorted(HOOKS)}, got {kind!r}")
        self.kind = kind
        self.d_inner, self.d_state, self.num_directions = op.d_inner, op.d_state, op.K
        self.mamba_adaptor_modules = nn.ModuleDict()
        self._active_adapter = adapter_name
        self.merged_adapters = []
        ref = next(op.parameters())
        self.update_layer(adapter_name, config, device=ref.device)

    def update_layer(
        self, adapter_name: str, config: MambaAdaptorConfig, device: torch.device | None = None, **kw: Any
    ) -> None:
        """Add (or replace) the adaptor named adapter_name, built from config."""
        if self.kind == "temporal":
            module = AdaptorT(self.d_inner, self.d_state, config, num_directions=self.num_directions)
        else:
            module = AdaptorS(self.d_inner, config)
        if device is None and len(self.mamba_adaptor_modules):
            device = next(self.mamba_adaptor_modules.parameters()).device
        self.mamba_adaptor_modules[adapter_name] = module.to(device) if device is not None else module
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Not possible for Mamba-Adaptor (see MERGE_ERROR)."""
        raise NotImplementedError(MERGE_ERROR)

    def unmerge(self) -> None:
        """Nothing is ever merged."""
        return None

    def _active_modules(self) -> list[nn.Module]:
        if self.disable_adapters:
            return []
        return [
            self.mamba_adaptor_modules[n] for n in self.active_adapters if n in self.mamba_adaptor_modules
        ]

    def forward(self, *args: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """temporal: (hs, Cs, H, W[, ys]) -> (ys +) summed read-outs; spatial: y -> chained adaptors(y)."""
        active = self._active_modules()
        if self.kind == "temporal":
            hs, Cs, H, W = args
            if not active:
                return hs.new_zeros(hs.shape[0], hs.shape[1], hs.shape[3]) if ys is None else ys
            out = active[0](hs, Cs, H, W, ys=ys)
            for module in active[1:]:
                out = module(hs, Cs, H, W, ys=out)
            return out
        (y,) = args
        for module in active:
            y = module(y)
        return y

    def __repr__(self) -> str:
        return "mamba_adaptor." + super().__repr__()
