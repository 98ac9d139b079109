"""VMamba models: the timm-registered family, checkpoint loading/conversion and the create_model entry point.

Importing this package registers the VMamba variants with timm (`timm.create_model("vmamba_tiny_s1l8")`).
"""

from .backbone import VMambaBackbone
from .checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    UntrustedCheckpointError,
    load_checkpoint,
    load_into_model,
)
from .factory import convert_checkpoint, create_model, list_models, model_info
from .mamba_adaptor import MambaAdaptorNet  # registers mamba_adaptor_b1/b2 with timm
from .vmamba import SS2D, VSSM, VSSBlock

__all__ = [
    "SS2D",
    "VSSM",
    "CheckpointError",
    "CheckpointMismatchError",
    "MambaAdaptorNet",
    "UntrustedCheckpointError",
    "VMambaBackbone",
    "VSSBlock",
    "convert_checkpoint",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_into_model",
    "model_info",
]
