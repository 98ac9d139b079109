"""peft's loading of a Mamba-Adaptor adapter, with the guarantees of ``adaptor_peft.load_adaptors``.

``PeftModel.from_pretrained`` injects the adapter into the caller's model first and reads the weights
afterwards, so a failed load used to leave the model changed (adaptors injected, head wrapped, base
frozen); and it loads NaN/Inf tensors without a word. For a local Mamba-Adaptor directory (and only for
one: every other adapter goes to peft untouched) the wrapped ``from_pretrained`` / ``load_adapter``

- read the weights file's header with our bounded reader first (regular file, sizes checked against
  the header: no FIFO hang, no sparse-file allocation);
- refuse non-finite tensors with NonFiniteTensorError and tensors whose shape does not fit with
  TensorShapeMismatchError, before anything is written into the model (``_check_state_dict``, called by
  the tuner while peft remaps the keys);
- on any failure restore the model they were given exactly: module tree, attributes and containers of
  every module, and every parameter's requires_grad (``ModelSnapshot``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from adaptor_peft.io import (
    AdaptorMetadataError,
    TensorShapeMismatchError,
    read_safetensors,
)
from adaptor_peft.io.adaptor_file import check_finite
from adaptor_peft.regular_file import open_regular_file

from .config import AdaptorPeftType, MambaAdaptorPeftConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_MAX_CONFIG_BYTES = 1 << 20  # an adapter_config.json is a few KB
_PEFT_PREFIX = "base_model.model."
_GUARD_MARK = "__adaptor_peft_guard__"


@dataclass(frozen=True)
class _Loading:
    source: str  # the weights file (or directory) named in errors
    ignore_mismatched_sizes: bool


_LOADING: contextvars.ContextVar[_Loading | None] = contextvars.ContextVar("adaptor_peft_load", default=None)


class ModelSnapshot:
    """The structure of a model (no tensor data): restore() puts every module back as it was.

    Records each module's ``__dict__`` (so attributes peft adds, e.g. ``peft_config``, go again), a copy
    of every dict/list/set held there (``_modules``, ``_parameters``, hooks, ``peft_config`` ...: peft
    mutates them in place) and every parameter's requires_grad.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules: list[tuple[nn.Module, dict[str, Any], list[tuple[Any, Any]]]] = []
        for module in model.modules():
            attrs = dict(module.__dict__)
            containers = [(v, _copy_container(v)) for v in attrs.values() if _copy_container(v) is not None]
            self.modules.append((module, attrs, containers))
        self.grads = [(p, p.requires_grad) for p in model.parameters()]

    def restore(self) -> None:
        """Put back every recorded module's attributes and containers, and every requires_grad flag."""
        for module, attrs, containers in self.modules:
            module.__dict__.clear()
            module.__dict__.update(attrs)
            for live, saved in containers:
                if isinstance(live, dict):
                    live.clear()
                    live.update(saved)
                elif isinstance(live, list):
                    live[:] = saved
                else:
                    live.clear()
                    live.update(saved)
        for p, flag in self.grads:
            p.requires_grad_(flag)


def _copy_container(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, set)):
        return type(value)(value)
    return None


def _ours(directory: Path, config: Any) -> bool:
    """True when ``directory`` holds a Mamba-Adaptor adapter (or ``config`` is one of ours)."""
    if isinstance(config, MambaAdaptorPeftConfig):
        return True
    if config is not None or not directory.is_dir():
        return False  # another config type, or a Hub id: peft's business
    path = directory / CONFIG_NAME
    try:
        f, size = open_regular_file(path)
    except FileNotFoundError:
        return False  # peft says what is missing
    except OSError as exc:  # a FIFO would block peft's own read for ever
        raise AdaptorMetadataError(path, f"cannot read the adapter config: {exc.strerror or exc}") from exc
    with f:
        if size > _MAX_CONFIG_BYTES:
            raise AdaptorMetadataError(
                path, f"{size:,} bytes, over the {_MAX_CONFIG_BYTES:,}-byte limit: not an adapter config"
            )
        text = f.read(_MAX_CONFIG_BYTES + 1)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False  # not JSON: peft words the refusal
    return isinstance(data, dict) and data.get("peft_type") == AdaptorPeftType.MAMBA_ADAPTOR.value


def _guarded(
    load: Callable[..., Any], target: Callable[[inspect.BoundArguments], nn.Module]
) -> Callable[..., Any]:
    """``load`` (peft's from_pretrained or load_adapter), restoring ``target`` if it fails on our adapter."""
    signature = inspect.signature(load)

    @functools.wraps(load)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        extra = bound.arguments.get("kwargs", {})
        directory = Path(os.fspath(bound.arguments["model_id"])) / (extra.get("subfolder") or "")
        if not _ours(directory, bound.arguments.get("config")):
            return load(*args, **kwargs)
        weights = directory / WEIGHTS_NAME
        if os.path.lexists(weights):
            read_safetensors(weights)  # header only, bounded: refuses a FIFO, device or lying sizes
        snapshot = ModelSnapshot(target(bound))
        token = _LOADING.set(_Loading(str(weights), bool(extra.get("ignore_mismatched_sizes", False))))
        try:
            return load(*args, **kwargs)
        except BaseException:
            snapshot.restore()
            raise
        finally:
            _LOADING.reset(token)

    setattr(wrapper, _GUARD_MARK, True)
    return wrapper


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], remapped: Mapping[str, torch.Tensor]
) -> None:
    """Refuse NaN/Inf tensors and shapes that do not fit, before peft writes anything into the model.

    torch's load_state_dict copies every fitting tensor before it raises on a misfit, so a shape error
    found there would leave the model half-written.
    """
    loading = _LOADING.get()
    source = loading.source if loading is not None else "adapter state dict"
    check_finite(source, state_dict)
    if loading is not None and loading.ignore_mismatched_sizes:
        return
    own = model.state_dict()
    for key, value in remapped.items():
        target = own.get(key, own.get(key.removeprefix(_PEFT_PREFIX)))
        if target is not None and tuple(target.shape) != tuple(value.shape):
            raise TensorShapeMismatchError(
                source, f"file has shape {list(value.shape)}, the model expects {list(target.shape)}", key=key
            )


def install() -> None:
    """Wrap PeftModel.from_pretrained and PeftModel.load_adapter (idempotent)."""
    if not getattr(PeftModel.from_pretrained, _GUARD_MARK, False):
        PeftModel.from_pretrained = classmethod(  # type: ignore[method-assign]
            _guarded(PeftModel.from_pretrained.__func__, lambda b: b.arguments["model"])
        )
    if not getattr(PeftModel.load_adapter, _GUARD_MARK, False):
        PeftModel.load_adapter = _guarded(  # type: ignore[method-assign]
            PeftModel.load_adapter, lambda b: b.arguments["self"]
        )


__all__ = ["ModelSnapshot", "check_state_dict", "install"]
