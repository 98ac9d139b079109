"""Adaptor files: save a model's adaptor (+ head) tensors with a self-describing header, load them back.

Layout: the standard safetensors container (never pickle) with the header of :mod:`.adaptor_header`.
Loading validates everything (the file, the header, the base model's fingerprint, the adaptor config
and every tensor's name, shape, dtype and values) before the target model is touched, and every
failure is a specific :class:`AdaptorFileError` subclass naming the file and the key or field.

The adaptor implementation is reached only through :func:`adaptor_backend`, so tests can route these
functions to a toy backend by patching that one function.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import safetensors.torch
import torch
from torch import nn

from adaptor_peft import adaptors
from adaptor_peft.adaptors.selection import head_module, is_under, module_prefixes
from adaptor_peft.atomic import atomic_write_bytes
from adaptor_peft.models.checkpoint import warn_suspicious_values
from adaptor_peft.version import __version__

from .adaptor_header import (
    FORMAT_VERSION,
    META_BASE_ARCHITECTURE,
    META_BASE_CONFIG,
    META_BASE_FINGERPRINT,
    META_CONFIG,
    META_CONTENT_SHA256,
    META_FORMAT_VERSION,
    META_HEAD_KEYS,
    META_INCLUDE_HEAD,
    META_LIBRARY_VERSION,
    META_PEFT_TYPE,
    META_TENSORS,
    META_USER,
    AdaptorHeader,
    content_digest,
    parse_adaptor_header,
)
from .errors import (
    AdaptorChecksumError,
    AdaptorConfigMismatchError,
    AdaptorFileError,
    AdaptorMetadataError,
    BaseArchitectureMismatchError,
    BaseFingerprintMismatchError,
    MissingTensorError,
    NonFiniteTensorError,
    TensorDtypeMismatchError,
    TensorShapeMismatchError,
    UnexpectedTensorError,
)
from .fingerprint import first_difference, model_fingerprint
from .safetensors_reader import DTYPE_TAGS, DTYPES, RawSafetensors, read_safetensors

# The SS2D hook attributes (shared contract): every key below them belongs to an adaptor, never the base.
ADAPTOR_HOOK_NAMES = ("adaptor_t", "adaptor_s")


# ------------------------------------------------------------------------------------ model helpers
def adaptor_backend() -> ModuleType:
    """The adaptor implementation files are saved from and loaded into (tests patch in a toy one)."""
    return adaptors


def _library_version() -> str:
    return __version__


def _has_adaptors(model: nn.Module) -> bool:
    return getattr(model, "adaptor_config", None) is not None


def _hook_keys(model: nn.Module) -> set[str]:
    marks = tuple(f".{h}." for h in ADAPTOR_HOOK_NAMES)
    return {k for k in model.state_dict() if any(m in f".{k}" for m in marks)}


def base_architecture(model: nn.Module) -> str:
    """Architecture name: timm's pretrained_cfg["architecture"], else model.arch_name, else the class name."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("architecture"):
        return str(cfg["architecture"])
    name = getattr(model, "arch_name", None)
    return name if isinstance(name, str) and name else type(model).__name__


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def base_config(model: nn.Module) -> dict:
    """The base model's constructor config if the model exposes one (for information; not compared)."""
    for attr in ("vssm_config", "model_config", "config"):
        value = getattr(model, attr, None)
        if value is None or isinstance(value, (nn.Module, torch.Tensor)):
            continue
        if hasattr(value, "to_dict") and callable(value.to_dict):
            value = value.to_dict()
        if isinstance(value, Mapping) or dataclasses.is_dataclass(value):
            return _jsonable(value)
    return {}


def _config_to_dict(config: Any) -> dict:
    if hasattr(config, "to_adaptor_config"):  # a peft-side config: keep only the adaptor fields
        config = config.to_adaptor_config()
    if hasattr(config, "to_dict"):
        return _jsonable(config.to_dict())
    return _jsonable(config)


def _normalised(d: Any) -> str:
    return json.dumps(_jsonable(d), sort_keys=True)


# ---------------------------------------------------------------------------------------------- save
def build_adaptor_file(
    model: nn.Module, include_head: bool = True, metadata: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata that save_adaptors writes (exposed for tests and tools)."""
    if not _has_adaptors(model):
        if getattr(model, "peft_config", None) is not None:
            raise ValueError(
                "save_adaptors: this is a peft model; save it with model.save_pretrained(directory) "
                "(adapter_model.safetensors + adapter_config.json)"
            )
        raise ValueError(
            "save_adaptors: the model carries no adaptors (model.adaptor_config is missing); "
            "call adaptor_peft.inject_adaptors(model, config) first"
        )
    api = adaptor_backend()
    with_head = api.adaptor_state_dict(model, include_head=True)
    without_head = api.adaptor_state_dict(model, include_head=False)
    head_keys = sorted(set(with_head) - set(without_head))
    chosen = with_head if include_head else without_head
    # clone: breaks aliasing (safetensors refuses shared storage) and detaches from the live model.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in chosen.items()}
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"save_adaptors: refusing to save {name!r}: {bad} of {t.numel()} values are NaN/Inf"
            )
    exclude = set(with_head) | _hook_keys(model)
    fingerprint = model_fingerprint(model, exclude=exclude)
    meta = {
        "format": "pt",
        META_FORMAT_VERSION: str(FORMAT_VERSION),
        META_LIBRARY_VERSION: _library_version(),
        META_PEFT_TYPE: "MAMBA_ADAPTOR",
        META_CONFIG: json.dumps(_config_to_dict(model.adaptor_config), sort_keys=True),
        META_BASE_ARCHITECTURE: base_architecture(model),
        META_BASE_CONFIG: json.dumps(base_config(model), sort_keys=True),
        META_BASE_FINGERPRINT: json.dumps(fingerprint, sort_keys=True),
        META_HEAD_KEYS: json.dumps(head_keys),
        META_INCLUDE_HEAD: "true" if include_head else "false",
        META_TENSORS: json.dumps(
            {k: {"dtype": DTYPE_TAGS[t.dtype], "shape": list(t.shape)} for k, t in sorted(tensors.items())},
            sort_keys=True,
        ),
        META_USER: json.dumps(_jsonable(dict(metadata or {})), sort_keys=True),
    }
    meta[META_CONTENT_SHA256] = content_digest(meta, tensors)
    return tensors, meta


def save_adaptors(
    model: nn.Module,
    path: str | os.PathLike,
    include_head: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save the adaptor (+ head/extras) tensors to one self-describing safetensors file, atomically."""
    path = Path(path)
    tensors, meta = build_adaptor_file(model, include_head=include_head, metadata=metadata)
    data = safetensors.torch.save(tensors, metadata=meta)
    atomic_write_bytes(path, data)
    return path


# ---------------------------------------------------------------------------------------------- load
def _shadow_copy(model: nn.Module) -> nn.Module:
    """A structural copy of the model whose parameters and buffers live on the meta device (no memory)."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        )
    return copy.deepcopy(model, memo)


def _adaptor_tensors(
    model: nn.Module, config: Any, path: Path
) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], set[str]]:
    """(name -> (shape, dtype) of every tensor the file's adaptors train, head included; the head's keys
    among them) for the model once the file's adaptors are injected. Derived from the model and the
    config only, never from the file's lists, so a file cannot choose what the base check skips."""
    api = adaptor_backend()
    if _has_adaptors(model):
        with_head = api.adaptor_state_dict(model, include_head=True)
        without_head = api.adaptor_state_dict(model, include_head=False)
    else:
        with_head = without_head = None
        last_exc: Exception | None = None
        for make in (_shadow_copy, copy.deepcopy):  # meta copy first; a real copy if injection needs values
            try:
                shadow = make(model)
                api.inject_adaptors(shadow, config)
                with_head = api.adaptor_state_dict(shadow, include_head=True)
                without_head = api.adaptor_state_dict(shadow, include_head=False)
                break
            except Exception as exc:  # noqa: BLE001 - any failure is reported as a config problem below
                last_exc = exc
        if with_head is None or without_head is None:
            raise AdaptorMetadataError(
                path,
                f"the stored adaptor config cannot be injected into this model: {last_exc}",
                key=META_CONFIG,
            ) from last_exc
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in with_head.items()}
    return shapes, set(with_head) - set(without_head)


def _check_head_keys(model: nn.Module, header: AdaptorHeader, path: Path) -> None:
    """head_keys may name only tensors of the model's classifier head (the base check skips them)."""
    head = head_module(model)
    prefixes = module_prefixes(model, [head]) if head is not None else []
    state = model.state_dict()
    for key in header.head_keys:
        if key not in state or not is_under(key.rpartition(".")[0], prefixes):
            where = f"the model's head is {prefixes[0]!r}" if prefixes else "the model has no classifier head"
            raise AdaptorMetadataError(
                path,
                f"lists {key!r}, which is not a tensor of the classifier head ({where}); head_keys may name "
                "only head tensors: the file was edited or is not for this model",
                key=META_HEAD_KEYS,
            )


def _base_mismatch(cls: type[AdaptorFileError], path: Path, message: str, key: str, allow: bool) -> None:
    """Raise ``cls``, or only warn when the caller allows a different base (deliberate transfer)."""
    if allow:
        warnings.warn(f"{path} [{key}]: {message} (loading anyway: allow_base_mismatch=True)", stacklevel=4)
    else:
        raise cls(path, message + " (pass allow_base_mismatch=True to load it anyway)", key=key)


def _check_arch(model: nn.Module, header: AdaptorHeader, path: Path, allow_mismatch: bool) -> bool:
    """True when the base architecture name matches (a mismatch raises, or warns and returns False)."""
    arch = base_architecture(model)
    if arch == header.base_architecture:
        return True
    _base_mismatch(
        BaseArchitectureMismatchError,
        path,
        f"adaptor was saved for base architecture {header.base_architecture!r}, the model is {arch!r}",
        META_BASE_ARCHITECTURE,
        allow_mismatch,
    )
    return False


def _check_fingerprint(
    model: nn.Module, header: AdaptorHeader, path: Path, allow_mismatch: bool, exclude: set[str]
) -> None:
    """The fingerprint of the base tensors (every key but ``exclude``) against the stored one."""
    current = model_fingerprint(model, exclude=exclude)
    stored = header.base_fingerprint
    if current["structure"] == stored["structure"] and current["values"] == stored["values"]:
        return
    diff = first_difference(stored["tensors"], current["tensors"])
    name, reason = diff if diff else (META_BASE_FINGERPRINT, "digest differs")
    if current["structure"] != stored["structure"]:
        cls: type[AdaptorFileError] = BaseArchitectureMismatchError
        message = (
            f"base tensor layout differs from the base the adaptor was saved on (first difference: "
            f"base tensor {name!r}: {reason})"
        )
    else:
        cls = BaseFingerprintMismatchError
        message = (
            f"base weights differ from the ones the adaptor was trained on (first difference: base tensor "
            f"{name!r}: {reason}); field {META_BASE_FINGERPRINT}"
        )
    _base_mismatch(cls, path, message, name, allow_mismatch)


def _check_config(model: nn.Module, config: Any, path: Path) -> None:
    current = _config_to_dict(model.adaptor_config)
    stored = _config_to_dict(config)
    if _normalised(current) == _normalised(stored):
        return
    for field in sorted(set(current) | set(stored)):
        if _normalised(current.get(field)) != _normalised(stored.get(field)):
            raise AdaptorConfigMismatchError(
                path,
                f"the model already has adaptors with {field}={current.get(field)!r} but the file was saved "
                f"with {field}={stored.get(field)!r}; remove_adaptors(model) first to load it",
                key=f"{META_CONFIG}.{field}",
            )


def _check_tensors(
    raw: RawSafetensors, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]], strict: bool
) -> list[str]:
    """Key set, shapes and dtypes against the model; returns the keys to load."""
    path, present = raw.path, raw.entries
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    if missing:
        msg = f"adaptor tensor missing from the file ({len(missing)} missing: {missing[:5]})"
        if strict:
            raise MissingTensorError(path, msg, key=missing[0])
        warnings.warn(f"{path} [{missing[0]}]: {msg}; kept at the injected initial values", stacklevel=3)
    if unexpected:
        msg = (
            f"file holds a tensor the model has no place for ({len(unexpected)} unexpected: {unexpected[:5]})"
        )
        if strict:
            raise UnexpectedTensorError(path, msg, key=unexpected[0])
        warnings.warn(f"{path} [{unexpected[0]}]: {msg}; ignored", stacklevel=3)
    keys = sorted(set(expected) & set(present))
    for k in keys:
        entry, (shape, dtype) = present[k], expected[k]
        if entry.shape != shape:
            raise TensorShapeMismatchError(
                path, f"file has shape {list(entry.shape)}, the model expects {list(shape)}", key=k
            )
        if DTYPES[entry.dtype][0] != dtype:
            raise TensorDtypeMismatchError(
                path,
                f"file has dtype {entry.dtype}, the model expects {DTYPE_TAGS.get(dtype, dtype)}",
                key=k,
            )
    return keys


def check_finite(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor]) -> None:
    """NonFiniteTensorError naming the first tensor with NaN/Inf; a warning for finite but huge values."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise NonFiniteTensorError(path, f"{bad} of {t.numel()} values are NaN or Inf", key=name)
    warn_suspicious_values(tensors, path)


def _check_content(raw: RawSafetensors, header: AdaptorHeader, tensors: dict[str, torch.Tensor]) -> None:
    """Decoded tensors are finite and match the header's content checksum (the file is as written)."""
    check_finite(raw.path, tensors)
    if content_digest(raw.metadata, tensors) != header.content_sha256:
        raise AdaptorChecksumError(
            raw.path,
            "content checksum mismatch: the file changed after it was written",
            key=META_CONTENT_SHA256,
        )


def read_adaptor_file(path: str | os.PathLike) -> tuple[AdaptorHeader, dict[str, torch.Tensor]]:
    """Read and fully validate an adaptor file on its own (no model): header, tensors, NaN/Inf, checksum."""
    raw = read_safetensors(path)
    header = parse_adaptor_header(raw)
    tensors = raw.decode()
    _check_content(raw, header, tensors)
    return header, tensors


def load_adaptors(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, allow_base_mismatch: bool = False
) -> nn.Module:
    """Validate an adaptor file against the model, then inject (if needed) and load its tensors.

    Everything is checked before the model is touched, so a failed load leaves the model unchanged.
    ``strict=False`` downgrades missing/unexpected tensors to warnings; ``allow_base_mismatch=True``
    downgrades a different base architecture name or fingerprint (deliberate transfer) to a warning.
    """
    raw = read_safetensors(path)
    header = parse_adaptor_header(raw)
    api = adaptor_backend()
    try:
        config = api.MambaAdaptorConfig.from_dict(header.config)
    except Exception as exc:  # noqa: BLE001 - any malformed config is a metadata problem
        raise AdaptorMetadataError(raw.path, f"invalid adaptor config: {exc}", key=META_CONFIG) from exc
    if _has_adaptors(model):  # first: a different config also changes which base tensors are trained
        _check_config(model, config, raw.path)
    same_arch = _check_arch(model, header, raw.path, allow_base_mismatch)
    if same_arch:
        _check_head_keys(model, header, raw.path)
    trained, head = _adaptor_tensors(model, config, raw.path)
    if same_arch:  # the exclusion of build_adaptor_file: what the config trains (head included), the hooks
        _check_fingerprint(model, header, raw.path, allow_base_mismatch, set(trained) | _hook_keys(model))
    expected = {k: v for k, v in trained.items() if header.include_head or k not in head}
    keys = _check_tensors(raw, expected, strict)
    tensors = raw.decode()
    _check_content(raw, header, tensors)

    # Commit: nothing below can fail on a validated file.
    if not _has_adaptors(model):
        api.inject_adaptors(model, config)
    state = model.state_dict()
    with torch.no_grad():
        for k in keys:
            state[k].copy_(tensors[k])
    return model
