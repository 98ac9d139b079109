"""adaptor_peft: parameter-efficient adaptation (Mamba-Adaptor) for visual state space models.

Importing the package registers the VMamba (and Mamba-Adaptor backbone) families with timm and the
Mamba-Adaptor tuner with peft, so `timm.create_model("vmamba_tiny_s1l8")` and
`peft.get_peft_model(model, MambaAdaptorPeftConfig(...))` work right away
(`adaptor_peft.get_peft_model` also accepts a plain `MambaAdaptorConfig`). Both happen when timm or peft
is imported (see `peft_hook`), and the names below import their modules on first use (PEP 562), so
`import adaptor_peft` and the CLI's `--help` load neither torch, timm nor peft.
"""

from .lazy_exports import lazy_dir as _lazy_dir
from .lazy_exports import resolve_lazy as _resolve_lazy
from .peft_hook import install as _install_peft_hook
from .peft_hook import install_timm as _install_timm_hook
from .shipped import shipped_base_path
from .version import __version__

_install_peft_hook()  # registers the tuner now if peft is imported, else right after it is
_install_timm_hook()  # registers the model families now if timm is imported, else right after it is

#: public name -> the submodule that defines it (imported on first use)
_LAZY = {
    "MambaAdaptorConfig": "adaptors",
    "adaptor_state_dict": "adaptors",
    "inject_adaptors": "adaptors",
    "remove_adaptors": "adaptors",
    "trainable_report": "adaptors",
    "AdaptorFileError": "io",
    "describe_file": "io",
    "load_adaptors": "io",
    "save_adaptors": "io",
    "convert_checkpoint": "models",
    "create_model": "models",
    "load_checkpoint": "models",
    "MambaAdaptorPeftConfig": "peft_tuner",  # imports peft (and registers the tuner)
    "get_peft_model": "peft_tuner",
}


def __getattr__(name: str) -> object:
    """Import a public name's module (or a subpackage such as ``adaptor_peft.models``) on first use."""
    return _resolve_lazy(__name__, globals(), _LAZY, name, subpackages=True)


def __dir__() -> list[str]:
    """The public names, loaded or not."""
    return _lazy_dir(globals(), _LAZY)


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
    "shipped_base_path",
    "trainable_report",
]
