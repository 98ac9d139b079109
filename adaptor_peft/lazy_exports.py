"""PEP 562 lazy exports, shared by the package and its subpackages: a public name's module is imported on
first use, so importing the package (and the CLI's ``--help``) loads neither torch, timm nor peft."""

from __future__ import annotations

import importlib
from typing import Any


def resolve_lazy(
    package: str, namespace: dict[str, Any], lazy: dict[str, str], name: str, subpackages: bool = False
) -> object:
    """``package.name``: from its submodule in ``lazy`` (then cached in ``namespace``) or, with
    ``subpackages``, the submodule ``package.name`` itself; else AttributeError."""
    if name in lazy:
        value = getattr(importlib.import_module(f".{lazy[name]}", package), name)
        namespace[name] = value
        return value
    if subpackages and not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def lazy_dir(namespace: dict[str, Any], lazy: dict[str, str]) -> list[str]:
    """The public names of a lazy package, loaded or not."""
    return sorted(set(namespace) | set(lazy))
