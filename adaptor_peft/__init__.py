"""adaptor_peft: parameter-efficient adaptation (Mamba-Adaptor) for visual state space models.

Importing the package registers the VMamba (and Mamba-Adaptor backbone) families with timm and the
Mamba-Adaptor tuner with peft, so `timm.create_model("vmamba_tiny_s1l8")` and
`peft.get_peft_model(model, MambaAdaptorPeftConfig(...))` work right away
(`adaptor_peft.get_peft_model` also accepts a plain `MambaAdaptorConfig`).
"""

__version__ = "0.1.0"

from .adaptors import (  # noqa: E402
    MambaAdaptorConfig,
    adaptor_state_dict,
    inject_adaptors,
    remove_adaptors,
    trainable_report,
)
from .io import AdaptorFileError, describe_file, load_adaptors, save_adaptors  # noqa: E402
from .models import convert_checkpoint, create_model, load_checkpoint  # noqa: E402
from .peft_tuner import MambaAdaptorPeftConfig, get_peft_model  # noqa: E402  (registers the tuner)

__all__ = [
    "AdaptorFileError",
    "MambaAdaptorConfig",
    "MambaAdaptorPeftConfig",
    "__version__",
    "adaptor_state_dict",
    "convert_checkpoint",
    "create_model",
    "describe_file",
    "get_peft_model",
    "inject_adaptors",
    "load_adaptors",
    "load_checkpoint",
    "remove_adaptors",
    "save_adaptors",
    "trainable_report",
]
