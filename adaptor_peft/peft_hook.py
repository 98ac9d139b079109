"""Register the Mamba-Adaptor peft tuner when peft is imported, not before.

Importing peft pulls in transformers (about 1.5 s), which users of the plain API and most CLI commands
never need. `import adaptor_peft` therefore only arranges the registration: at once if peft is
already imported, else by a one-shot import hook that runs `adaptor_peft.peft_tuner` right after peft
finishes importing. Either way `peft.PeftModel.from_pretrained` on a Mamba-Adaptor directory works
after `import adaptor_peft`, whatever the import order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

TUNER_MODULE = "adaptor_peft.peft_tuner"


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds peft through the other finders and wraps its loader to register our tuner afterwards."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Only for the top-level `peft`: its usual spec, with a loader that registers afterwards."""
        if fullname != "peft":
            return None
        uninstall()  # one shot; also keeps the lookup below from finding this finder again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        for finder in sys.meta_path:
            if spec is not None:
                break
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    """Delegates to peft's own loader, then imports the tuner module (which registers itself)."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """The inner loader's module (None: the default)."""
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        """Run peft, then register Mamba-Adaptor with it."""
        module.__spec__.loader = self.inner  # peft sees its usual loader (e.g. for resources)
        module.__loader__ = self.inner
        self.inner.exec_module(module)
        _register()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


_HOOK = _RegisterAfterPeft()


def _register() -> None:
    # A peft this tuner cannot work with must not break `import peft` for everything else: warn; using
    # adaptor_peft.MambaAdaptorPeftConfig / get_peft_model then raises the real error.
    try:
        importlib.import_module(TUNER_MODULE)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(
            f"adaptor_peft could not register its Mamba-Adaptor tuner with peft "
            f"{getattr(sys.modules.get('peft'), '__version__', '?')}: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )


def install() -> None:
    """Register now if peft is imported already, else once it is (idempotent)."""
    if "peft" in sys.modules:
        _register()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    """Remove the import hook (registration that already happened stays)."""
    while _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


__all__ = ["install", "uninstall"]
