"""Register with peft and timm when they are imported, not before.

Importing peft pulls in transformers (about 1.5 s) and timm about 0.5 s (plus torch), which most CLI
commands never need. `import adaptor_peft` therefore only arranges the registrations: at once if the
library is already imported, else by a one-shot import hook that runs our module right after the
library finishes importing (`adaptor_peft.peft_tuner` for peft, `adaptor_peft.models` for timm's model
registry). Either way `peft.PeftModel.from_pretrained` on a Mamba-Adaptor directory and
`timm.create_model("vmamba_tiny_s1l8")` work after `import adaptor_peft`, whatever the import order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable, Sequence

TUNER_MODULE = "adaptor_peft.peft_tuner"
#: Importing this registers the VMamba and Mamba-Adaptor families with timm (``@register_model``).
TIMM_MODELS_MODULE = "adaptor_peft.models"


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``trigger`` through the other finders and wraps its loader to register afterwards."""

    trigger = ""

    def register(self) -> None:
        """Import what registers with the trigger library."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Only for the top-level trigger module: its usual spec, with a loader that registers afterwards."""
        if fullname != self.trigger:
            return None
        _remove(self)  # one shot; also keeps the lookup below from finding this finder again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        for finder in sys.meta_path:
            if spec is not None:
                break
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self.register)
        return spec


class _RegisterAfterPeft(_RegisterAfterImport):
    """Registers the Mamba-Adaptor tuner right after peft is imported."""

    trigger = "peft"

    def register(self) -> None:
        """Import the tuner module (it registers itself)."""
        _register()


class _RegisterAfterTimm(_RegisterAfterImport):
    """Registers the VMamba model families right after timm is imported."""

    trigger = "timm"

    def register(self) -> None:
        """Import the model modules (their ``@register_model`` entries register with timm)."""
        _register_timm()


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to the library's own loader, then runs ``register``."""

    def __init__(self, inner: importlib.abc.Loader, register: Callable[[], None]) -> None:
        self.inner = inner
        self.register = register

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """The inner loader's module (None: the default)."""
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        """Run the library, then register with it."""
        module.__spec__.loader = self.inner  # the library sees its usual loader (e.g. for resources)
        module.__loader__ = self.inner
        self.inner.exec_module(module)
        self.register()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


_HOOK = _RegisterAfterPeft()
_TIMM_HOOK = _RegisterAfterTimm()


def _import_or_warn(module: str, what: str, library: str) -> None:
    # A library these modules cannot work with must not break `import peft` / `import timm` for
    # everything else: warn; using adaptor_peft's API for it then raises the real error.
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(
            f"adaptor_peft could not register its {what} with {library} "
            f"{getattr(sys.modules.get(library), '__version__', '?')}: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=3,
        )


def _register() -> None:
    _import_or_warn(TUNER_MODULE, "Mamba-Adaptor tuner", "peft")


def _register_timm() -> None:
    _import_or_warn(TIMM_MODELS_MODULE, "VMamba models", "timm")


def install() -> None:
    """Register now if peft is imported already, else once it is (idempotent)."""
    if "peft" in sys.modules:
        _register()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def install_timm() -> None:
    """Register the model families with timm now if timm is imported already, else once it is."""
    if "timm" in sys.modules:
        _register_timm()
    elif _TIMM_HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _TIMM_HOOK)


def _remove(hook: _RegisterAfterImport) -> None:
    while hook in sys.meta_path:
        sys.meta_path.remove(hook)


def uninstall() -> None:
    """Remove the peft import hook (registration that already happened stays)."""
    _remove(_HOOK)


__all__ = ["install", "install_timm", "uninstall"]
