"""adaptor_peft: parameter-efficient adaptation (Mamba-Adaptor) for visual state space models.

Importing the package registers the VMamba (and Mamba-Adaptor backbone) families with timm and the
Mamba-Adaptor tuner with peft, so `timm.create_model("vmamba_tiny_s1l8")` and
`peft.get_peft_model(model, MambaAdaptorPeftConfig(...))` work right away
(`adaptor_peft.get_peft_model` also accepts a plain `MambaAdaptorConfig`). peft itself is imported
only when used: the tuner registers as soon as peft is imported (see `peft_hook`).
"""

from .adaptors import (  # noqa: E402
    MambaAdaptorConfig,
    adaptor_state_dict,
    inject_adaptors,
    remove_adaptors,
    trainable_report,
)
from .io import AdaptorFileError, describe_file, load_adaptors, save_adaptors  # noqa: E402
from .models import convert_checkpoint, create_model, load_checkpoint  # noqa: E402
from .peft_hook import install as _install_peft_hook  # noqa: E402
from .version import __version__  # noqa: E402

_install_peft_hook()  # registers the tuner now if peft is imported, else right after it is

_PEFT_NAMES = ("MambaAdaptorPeftConfig", "get_peft_model")


def __getattr__(name: str) -> object:
    """The peft-side names import peft (and register the tuner) on first use."""
    if name in _PEFT_NAMES:
        from . import peft_tuner

        return getattr(peft_tuner, name)
    raise AttributeError(f"module 'adaptor_peft' has no attribute {name!r}")


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
