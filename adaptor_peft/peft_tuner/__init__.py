"""Mamba-Adaptor as a registered peft tuner (config, layer, model), registered on import.

peft 0.21's ``register_peft_method`` only accepts names already in its closed ``PeftType`` enum, so we
write our own str enum member into peft.mapping's three tables instead (docs/ecosystem.md §1.4), and
wrap ``PeftModel.from_pretrained`` / ``load_adapter`` so that loading one of our adapters gets the checks of
``load_adaptors`` and leaves the caller's model as it was when it fails (:mod:`.guard`).
After ``import adaptor_peft``: ``peft.get_peft_model``, ``PeftModel.from_pretrained``,
``PeftConfig.from_pretrained`` and named adapters all work with ``MambaAdaptorPeftConfig``.
"""

from __future__ import annotations

from typing import Any

import peft
from peft import PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from torch import nn

from adaptor_peft.adaptors import MambaAdaptorConfig

from . import guard
from .config import AdaptorPeftType, MambaAdaptorPeftConfig
from .layer import MambaAdaptorLayer
from .model import MambaAdaptorModel


def register() -> None:
    """Write our entries into peft's mapping tables (idempotent)."""
    key = AdaptorPeftType.MAMBA_ADAPTOR
    PEFT_TYPE_TO_CONFIG_MAPPING[key] = MambaAdaptorPeftConfig
    PEFT_TYPE_TO_TUNER_MAPPING[key] = MambaAdaptorModel
    PEFT_TYPE_TO_PREFIX_MAPPING[key] = MambaAdaptorModel.prefix
    guard.install()  # from_pretrained / load_adapter of our adapters: checked, and undone on failure


register()


def as_peft_config(
    config: MambaAdaptorConfig | MambaAdaptorPeftConfig, **peft_fields: Any
) -> MambaAdaptorPeftConfig:
    """The peft-side config for a MambaAdaptorConfig (a MambaAdaptorPeftConfig is returned as is)."""
    if isinstance(config, MambaAdaptorPeftConfig):
        if peft_fields:
            raise ValueError("as_peft_config: peft fields can only be added to a plain MambaAdaptorConfig")
        return config
    return MambaAdaptorPeftConfig.from_adaptor_config(config, **peft_fields)


def get_peft_model(
    model: nn.Module, config: MambaAdaptorConfig | MambaAdaptorPeftConfig, adapter_name: str = "default"
) -> PeftModel:
    """peft.get_peft_model that also takes a plain MambaAdaptorConfig."""
    return peft.get_peft_model(model, as_peft_config(config), adapter_name=adapter_name)


__all__ = [
    "AdaptorPeftType",
    "MambaAdaptorLayer",
    "MambaAdaptorModel",
    "MambaAdaptorPeftConfig",
    "as_peft_config",
    "get_peft_model",
    "register",
]
