"""Adaptor files: one safetensors file holding the adaptor (+ head) tensors and a self-describing header.

Layout: the standard safetensors container (never pickle). ``__metadata__`` holds namespaced string
fields (JSON where structured): format version, library version, the MambaAdaptorConfig, the base
model's architecture and constructor config, a fingerprint of the frozen base weights, the tensor
table and a content checksum. Loading validates everything before the target model is touched, and
every failure is a specific :class:`AdaptorFileError` subclass naming the file and the key or field.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from adaptor_peft.fingerprint import first_difference, model_fingerprint, tensor_bytes
from adaptor_peft.version import __version__

from .atomic import atomic_write_bytes

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

NS = "adaptor_peft."
META_FORMAT_VERSION = NS + "format_version"
META_LIBRARY_VERSION = NS + "version"
META_PEFT_TYPE = NS + "peft_type"
META_CONFIG = NS + "config"
META_BASE_ARCHITECTURE = NS + "base_architecture"
META_BASE_CONFIG = NS + "base_config"
META_BASE_FINGERPRINT = NS + "base_fingerprint"
META_HEAD_KEYS = NS + "head_keys"
META_INCLUDE_HEAD = NS + "include_head"
META_TENSORS = NS + "tensors"
META_USER = NS + "user_metadata"
META_CONTENT_SHA256 = NS + "content_sha256"

REQUIRED_FIELDS = (
    META_FORMAT_VERSION,
    META_LIBRARY_VERSION,
    META_CONFIG,
    META_BASE_ARCHITECTURE,
    META_BASE_FINGERPRINT,
    META_HEAD_KEYS,
    META_INCLUDE_HEAD,
    META_TENSORS,
    META_CONTENT_SHA256,
)

# The SS2D hook attributes (shared contract): every key below them belongs to an adaptor, never the base.
ADAPTOR_HOOK_NAMES = ("adaptor_t", "adaptor_s")

# safetensors dtype tag -> (torch dtype, bytes per element)
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
_DTYPE_TAGS = {dt: tag for tag, (dt, _) in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


# --------------------------------------------------------------------------------------------- errors
class AdaptorFileError(ValueError):
    """Base class: an adaptor file cannot be used; the message names the file and the key or field."""

    def __init__(self, path: str | os.PathLike, message: str, key: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        where = f" [{key}]" if key is not None else ""
        super().__init__(f"{self.path}{where}: {message}")


class AdaptorFileUnreadableError(AdaptorFileError):
    """The file does not exist, cannot be read, or is not a safetensors file at all."""


class AdaptorFileCorruptError(AdaptorFileError):
    """The file is truncated, has trailing bytes, or its data does not match its checksum."""


class AdaptorHeaderError(AdaptorFileCorruptError):
    """The safetensors header is not valid JSON or lies about dtypes, shapes or data offsets."""


class AdaptorChecksumError(AdaptorFileCorruptError):
    """The tensors or metadata changed after the file was written (content checksum mismatch)."""


class AdaptorFormatVersionError(AdaptorFileError):
    """The file was written in an adaptor-file format version this library does not know."""


class AdaptorMetadataError(AdaptorFileError):
    """A required metadata field is missing or malformed (or the file is not an adaptor file)."""


class AdaptorConfigMismatchError(AdaptorFileError):
    """The model already carries adaptors whose config differs from the file's."""


class BaseModelMismatchError(AdaptorFileError):
    """The file was saved on a different base model."""


class BaseArchitectureMismatchError(BaseModelMismatchError):
    """The base architecture (name or tensor layout) differs from the one the file was saved on."""


class BaseFingerprintMismatchError(BaseModelMismatchError):
    """Same architecture, but the frozen base weights differ from the ones the file was saved on."""


class AdaptorTensorError(AdaptorFileError):
    """A tensor in the file does not fit the model."""


class MissingTensorError(AdaptorTensorError):
    """The model expects an adaptor tensor that the file lacks."""


class UnexpectedTensorError(AdaptorTensorError):
    """The file holds a tensor that the model has no place for."""


class TensorShapeMismatchError(AdaptorTensorError):
    """A tensor's shape differs from the model's."""


class TensorDtypeMismatchError(AdaptorTensorError):
    """A tensor's dtype differs from the model's."""


class NonFiniteTensorError(AdaptorTensorError):
    """A tensor holds NaN or Inf values."""


# ------------------------------------------------------------------------------------- raw container
@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin


@dataclass
class RawSafetensors:
    """A parsed, structurally checked safetensors file (header and data still as bytes)."""

    path: Path
    data: bytes  # the whole file, or only length prefix + header when read with header_only=True
    file_size: int
    header_len: int
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]

    def decode(self) -> dict[str, torch.Tensor]:
        """All tensors, decoded by safetensors itself (its own checks wrapped as AdaptorFileError)."""
        try:
            if len(self.data) != self.file_size:
                self.data = self.path.read_bytes()
            return safetensors.torch.load(self.data)
        except Exception as exc:  # SafetensorError, or anything the decoder raises on bad bytes
            raise AdaptorFileCorruptError(self.path, f"safetensors cannot decode the file: {exc}") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read(path: Path, header_only: bool) -> tuple[bytes, int]:
    """(bytes, file size): the whole file, or just the length prefix and the header."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not header_only:
            data = f.read()
            return data, len(data)
        data = f.read(8)
        if len(data) == 8:
            n = int.from_bytes(data, "little")
            if n <= min(size - 8, _MAX_HEADER_BYTES):
                data += f.read(n)
        return data, size


def read_safetensors(path: str | os.PathLike, header_only: bool = False) -> RawSafetensors:
    """Read a safetensors file and check its header fully (JSON, dtypes, shapes, contiguous offsets).

    ``header_only`` reads just the header (for describing large checkpoints); decode() reads the rest.
    """
    path = Path(path)
    try:
        data, size = _read(path, header_only)
    except FileNotFoundError as exc:
        raise AdaptorFileUnreadableError(path, "file not found") from exc
    except IsADirectoryError as exc:
        hint = (
            " (a peft adapter directory: load it with peft.PeftModel.from_pretrained(model, directory))"
            if (path / "adapter_config.json").is_file()
            else ""
        )
        raise AdaptorFileUnreadableError(path, f"is a directory, not an adaptor file{hint}") from exc
    except OSError as exc:
        raise AdaptorFileUnreadableError(path, f"cannot read the file: {exc}") from exc
    if size < 8:
        raise AdaptorFileUnreadableError(
            path, f"file has {size} bytes, fewer than the 8-byte safetensors length prefix", key="header"
        )
    header_len = int.from_bytes(data[:8], "little")
    if header_len > min(size - 8, _MAX_HEADER_BYTES):
        raise AdaptorFileCorruptError(
            path,
            f"the length prefix announces a {header_len}-byte header but only {size - 8} bytes follow "
            "(truncated file, or not a safetensors file)",
            key="header",
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdaptorHeaderError(path, f"header is not valid UTF-8 JSON ({exc})", key="header") from exc
    if not isinstance(header, dict):
        raise AdaptorHeaderError(
            path, f"header is a JSON {type(header).__name__}, not an object", key="header"
        )

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise AdaptorHeaderError(path, "__metadata__ must map strings to strings", key="__metadata__")

    body_len = size - 8 - header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise AdaptorHeaderError(path, "entry must hold exactly dtype, shape and data_offsets", key=name)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise AdaptorHeaderError(path, f"unknown dtype {dtype!r} (known: {sorted(_DTYPES)})", key=name)
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise AdaptorHeaderError(path, f"shape {shape!r} is not a list of non-negative ints", key=name)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise AdaptorHeaderError(
                path, f"data_offsets {offsets!r} are not two ordered byte offsets", key=name
            )
        if offsets[1] > body_len:
            raise AdaptorFileCorruptError(
                path,
                f"tensor data ends at byte {offsets[1]} but the file holds only {body_len} data bytes "
                "(truncated file?)",
                key=name,
            )
        need = math.prod(shape) * _DTYPES[dtype][1]
        if offsets[1] - offsets[0] != need:
            raise AdaptorHeaderError(
                path,
                f"header says dtype {dtype} shape {shape} ({need} bytes) but data_offsets {offsets} span "
                f"{offsets[1] - offsets[0]} bytes",
                key=name,
            )
        entries[name] = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])

    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise AdaptorHeaderError(
                path,
                f"data starts at byte {e.begin}, expected {pos} (tensors overlap or leave a gap)",
                key=name,
            )
        pos = e.end
    if pos != body_len:
        raise AdaptorFileCorruptError(
            path,
            f"tensors cover {pos} data bytes but the file holds {body_len} (trailing bytes)",
            key="header",
        )
    return RawSafetensors(path, data, size, header_len, entries, metadata)


# ----------------------------------------------------------------------------------- metadata parsing
@dataclass
class AdaptorHeader:
    """The validated adaptor metadata of a file."""

    format_version: int
    library_version: str
    config: dict
    base_architecture: str
    base_config: dict
    base_fingerprint: dict
    head_keys: list[str]
    include_head: bool
    tensors: dict[str, dict]
    user_metadata: dict
    content_sha256: str


def _json_field(raw: RawSafetensors, field: str, kind: type) -> Any:
    try:
        value = json.loads(raw.metadata[field])
    except (ValueError, RecursionError) as exc:
        raise AdaptorMetadataError(raw.path, f"metadata field is not valid JSON ({exc})", key=field) from exc
    if not isinstance(value, kind):
        raise AdaptorMetadataError(
            raw.path, f"metadata field must be a JSON {kind.__name__}, got {type(value).__name__}", key=field
        )
    return value


def parse_adaptor_header(raw: RawSafetensors) -> AdaptorHeader:
    """Check the adaptor metadata of a parsed file: version, required fields, and the tensor table."""
    meta, path = raw.metadata, raw.path
    if META_FORMAT_VERSION not in meta:
        hint = ""
        if not any(k.startswith(NS) for k in meta):
            hint = " (no adaptor_peft metadata: not an adaptor file"
            if raw.path.name == "adapter_model.safetensors":
                hint += "; a peft adapter: load its directory with peft.PeftModel.from_pretrained"
            hint += ")"
        raise AdaptorMetadataError(path, f"missing metadata field{hint}", key=META_FORMAT_VERSION)
    version_text = meta[META_FORMAT_VERSION]
    if not version_text.isdigit() or int(version_text) not in SUPPORTED_FORMAT_VERSIONS:
        raise AdaptorFormatVersionError(
            path,
            f"unknown adaptor file format version {version_text!r}; this adaptor_peft reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)} (upgrade adaptor_peft?)",
            key=META_FORMAT_VERSION,
        )
    for field in REQUIRED_FIELDS:
        if field not in meta:
            raise AdaptorMetadataError(path, "missing metadata field", key=field)

    tensors = _json_field(raw, META_TENSORS, dict)
    for name, spec in tensors.items():
        if not (
            isinstance(spec, dict)
            and isinstance(spec.get("dtype"), str)
            and isinstance(spec.get("shape"), list)
            and all(_is_int(d) for d in spec["shape"])
        ):
            raise AdaptorMetadataError(path, f"malformed tensor table entry for {name!r}", key=META_TENSORS)
    # The table is written independently of the safetensors header; both must tell the same story.
    for name in sorted(set(tensors) | set(raw.entries)):
        if name not in raw.entries:
            raise AdaptorHeaderError(
                path, f"tensor table lists {name!r} but the file has no such tensor", key=name
            )
        if name not in tensors:
            raise AdaptorHeaderError(path, f"tensor {name!r} is not in the {META_TENSORS} table", key=name)
        entry, spec = raw.entries[name], tensors[name]
        if entry.dtype != spec["dtype"] or list(entry.shape) != spec["shape"]:
            raise AdaptorHeaderError(
                path,
                f"header says dtype {entry.dtype} shape {list(entry.shape)} but the {META_TENSORS} "
                f"table says dtype {spec['dtype']} shape {spec['shape']}",
                key=name,
            )

    fingerprint = _json_field(raw, META_BASE_FINGERPRINT, dict)
    if not (
        isinstance(fingerprint.get("structure"), str)
        and isinstance(fingerprint.get("values"), str)
        and isinstance(fingerprint.get("tensors"), dict)
    ):
        raise AdaptorMetadataError(
            path, "fingerprint lacks structure/values/tensors", key=META_BASE_FINGERPRINT
        )
    head_keys = _json_field(raw, META_HEAD_KEYS, list)
    if not all(isinstance(k, str) for k in head_keys):
        raise AdaptorMetadataError(path, "must be a list of strings", key=META_HEAD_KEYS)
    include_head = meta[META_INCLUDE_HEAD]
    if include_head not in ("true", "false"):
        raise AdaptorMetadataError(
            path, f"must be 'true' or 'false', got {include_head!r}", key=META_INCLUDE_HEAD
        )
    return AdaptorHeader(
        format_version=int(version_text),
        library_version=meta[META_LIBRARY_VERSION],
        config=_json_field(raw, META_CONFIG, dict),
        base_architecture=meta[META_BASE_ARCHITECTURE],
        base_config=_json_field(raw, META_BASE_CONFIG, dict) if META_BASE_CONFIG in meta else {},
        base_fingerprint=fingerprint,
        head_keys=head_keys,
        include_head=include_head == "true",
        tensors=tensors,
        user_metadata=_json_field(raw, META_USER, dict) if META_USER in meta else {},
        content_sha256=meta[META_CONTENT_SHA256],
    )


def content_digest(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the metadata (minus the digest field) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != META_CONTENT_SHA256}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}|{_DTYPE_TAGS.get(t.dtype, str(t.dtype))}|{list(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


# ------------------------------------------------------------------------------------ model helpers
def _adaptors_api() -> Any:
    # Imported lazily: the adaptors package imports the model code, which io does not need otherwise.
    from adaptor_peft import adaptors

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


def _fingerprint_exclusions(model: nn.Module, file_keys: set[str], head_keys: list[str]) -> set[str]:
    excl = set(file_keys) | set(head_keys) | _hook_keys(model)
    if _has_adaptors(model):
        excl |= set(_adaptors_api().adaptor_state_dict(model, include_head=True))
    return excl


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
    api = _adaptors_api()
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
            {k: {"dtype": _DTYPE_TAGS[t.dtype], "shape": list(t.shape)} for k, t in sorted(tensors.items())},
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


def _expected_adaptor_tensors(
    model: nn.Module, config: Any, include_head: bool, path: Path
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes that the model would hold once the file's adaptors are injected."""
    api = _adaptors_api()
    if _has_adaptors(model):
        sd = api.adaptor_state_dict(model, include_head=include_head)
    else:
        sd = None
        last_exc: Exception | None = None
        for make in (_shadow_copy, copy.deepcopy):  # meta copy first; a real copy if injection needs values
            try:
                shadow = make(model)
                api.inject_adaptors(shadow, config)
                sd = api.adaptor_state_dict(shadow, include_head=include_head)
                break
            except Exception as exc:  # noqa: BLE001 - any failure is reported as a config problem below
                last_exc = exc
        if sd is None:
            raise AdaptorMetadataError(
                path,
                f"the stored adaptor config cannot be injected into this model: {last_exc}",
                key=META_CONFIG,
            ) from last_exc
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def _check_base(model: nn.Module, header: AdaptorHeader, path: Path, allow_mismatch: bool) -> None:
    def fail(cls: type[AdaptorFileError], message: str, key: str) -> None:
        if allow_mismatch:
            warnings.warn(
                f"{path} [{key}]: {message} (loading anyway: allow_base_mismatch=True)", stacklevel=3
            )
        else:
            raise cls(path, message + " (pass allow_base_mismatch=True to load it anyway)", key=key)

    arch = base_architecture(model)
    if arch != header.base_architecture:
        fail(
            BaseArchitectureMismatchError,
            f"adaptor was saved for base architecture {header.base_architecture!r}, the model is {arch!r}",
            META_BASE_ARCHITECTURE,
        )
        return
    exclude = _fingerprint_exclusions(model, set(header.tensors), header.head_keys)
    current = model_fingerprint(model, exclude=exclude)
    stored = header.base_fingerprint
    if current["structure"] == stored["structure"] and current["values"] == stored["values"]:
        return
    diff = first_difference(stored["tensors"], current["tensors"])
    name, reason = diff if diff else (META_BASE_FINGERPRINT, "digest differs")
    if current["structure"] != stored["structure"]:
        fail(
            BaseArchitectureMismatchError,
            f"base tensor layout differs from the base the adaptor was saved on (first difference: "
            f"base tensor {name!r}: {reason})",
            name,
        )
    else:
        fail(
            BaseFingerprintMismatchError,
            f"base weights differ from the ones the adaptor was trained on (first difference: base tensor "
            f"{name!r}: {reason}); field {META_BASE_FINGERPRINT}",
            name,
        )


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
        if _DTYPES[entry.dtype][0] != dtype:
            raise TensorDtypeMismatchError(
                path,
                f"file has dtype {entry.dtype}, the model expects {_DTYPE_TAGS.get(dtype, dtype)}",
                key=k,
            )
    return keys


def _check_finite(raw: RawSafetensors, tensors: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise NonFiniteTensorError(raw.path, f"{bad} of {t.numel()} values are NaN or Inf", key=name)


def read_adaptor_file(path: str | os.PathLike) -> tuple[AdaptorHeader, dict[str, torch.Tensor]]:
    """Read and fully validate an adaptor file on its own (no model): header, tensors, NaN/Inf, checksum."""
    raw = read_safetensors(path)
    header = parse_adaptor_header(raw)
    tensors = raw.decode()
    _check_finite(raw, tensors)
    if content_digest(raw.metadata, tensors) != header.content_sha256:
        raise AdaptorChecksumError(
            raw.path,
            "content checksum mismatch: the file changed after it was written",
            key=META_CONTENT_SHA256,
        )
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
    api = _adaptors_api()
    try:
        config = api.MambaAdaptorConfig.from_dict(header.config)
    except Exception as exc:  # noqa: BLE001 - any malformed config is a metadata problem
        raise AdaptorMetadataError(raw.path, f"invalid adaptor config: {exc}", key=META_CONFIG) from exc
    if _has_adaptors(model):  # first: a different config also changes which base tensors are trained
        _check_config(model, config, raw.path)
    _check_base(model, header, raw.path, allow_base_mismatch)
    expected = _expected_adaptor_tensors(model, config, header.include_head, raw.path)
    keys = _check_tensors(raw, expected, strict)
    tensors = raw.decode()
    _check_finite(raw, tensors)
    if content_digest(raw.metadata, tensors) != header.content_sha256:
        raise AdaptorChecksumError(
            raw.path,
            "content checksum mismatch: the file changed after it was written",
            key=META_CONTENT_SHA256,
        )

    # Commit: nothing below can fail on a validated file.
    if not _has_adaptors(model):
        api.inject_adaptors(model, config)
    state = model.state_dict()
    with torch.no_grad():
        for k in keys:
            state[k].copy_(tensors[k])
    return model


# ------------------------------------------------------------------------------------------ describe
def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{n} B"


def _tensor_table(rows: list[tuple[str, str, tuple[int, ...], int]]) -> list[str]:
    """Lines of a name/dtype/shape/params/bytes table plus a total line."""
    if not rows:
        return ["  (no tensors)"]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {'name':<{width}}  {'dtype':<5}  {'shape':<20}  {'params':>10}  {'bytes':>10}"]
    total_params = total_bytes = 0
    for name, dtype, shape, nbytes in rows:
        numel = math.prod(shape)
        total_params += numel
        total_bytes += nbytes
        lines.append(f"  {name:<{width}}  {dtype:<5}  {str(list(shape)):<20}  {numel:>10,}  {nbytes:>10,}")
    lines.append(
        f"  total: {len(rows)} tensors, {total_params:,} params, {_human_bytes(total_bytes)} of data"
    )
    return lines


def _describe_safetensors(path: Path) -> list[str]:
    raw = read_safetensors(path, header_only=True)
    rows = [(k, e.dtype, e.shape, e.nbytes) for k, e in sorted(raw.entries.items())]
    lines: list[str] = []
    if META_FORMAT_VERSION in raw.metadata:
        header = parse_adaptor_header(raw)
        lines += [
            f"adaptor file: {path}",
            f"  format version: {header.format_version}   written by adaptor_peft {header.library_version}",
            f"  base architecture: {header.base_architecture}",
            f"  base fingerprint: {header.base_fingerprint.get('values', '')[:16]} "
            f"({header.base_fingerprint.get('num_tensors', '?')} frozen base tensors)",
            f"  includes head: {header.include_head}",
            "  adaptor config:",
        ]
        lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(header.config.items())]
        if header.base_config:
            lines.append("  base config:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(header.base_config.items())]
        if header.user_metadata:
            lines.append("  user metadata:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(header.user_metadata.items())]
    else:
        lines.append(f"safetensors file: {path}")
        if raw.metadata:
            lines.append("  metadata:")
            lines += [f"    {k}: {v}" for k, v in sorted(raw.metadata.items())]
    lines.append("  tensors:")
    lines += _tensor_table(rows)
    lines.append(f"  file size: {_human_bytes(raw.file_size)} ({raw.file_size:,} bytes)")
    return lines


def _describe_pickle_checkpoint(path: Path) -> list[str]:
    from adaptor_peft.models import load_checkpoint  # weights_only loading; never unpickles code

    state = load_checkpoint(path)
    rows = [
        (k, _DTYPE_TAGS.get(t.dtype, str(t.dtype)), tuple(t.shape), t.numel() * t.element_size())
        for k, t in sorted(state.items())
    ]
    return [
        f"checkpoint: {path}",
        "  tensors:",
        *_tensor_table(rows),
        f"  file size: {_human_bytes(path.stat().st_size)}",
    ]


def _describe_peft_dir(path: Path) -> list[str]:
    cfg_path = path / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdaptorMetadataError(cfg_path, f"cannot read peft adapter config: {exc}") from exc
    lines = [
        f"peft adapter directory: {path}",
        f"  peft_type: {cfg.get('peft_type')}",
        "  adapter_config.json:",
    ]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(cfg.items()) if k != "peft_type"]
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        raw = read_safetensors(weights, header_only=True)
        rows = [(k, e.dtype, e.shape, e.nbytes) for k, e in sorted(raw.entries.items())]
        lines += ["  adapter_model.safetensors:", *_tensor_table(rows)]
        lines.append(f"  file size: {_human_bytes(raw.file_size)} ({raw.file_size:,} bytes)")
    else:
        lines.append("  adapter_model.safetensors: missing")
    subdirs = sorted(p.name for p in path.iterdir() if (p / "adapter_config.json").is_file())
    if subdirs:
        lines.append(f"  other named adapters (sub-folders): {', '.join(subdirs)}")
    return lines


def describe_file(path: str | os.PathLike) -> str:
    """Human-readable summary of an adaptor file, a model checkpoint, or a peft adapter directory."""
    path = Path(path)
    if path.is_dir():
        return "\n".join(_describe_peft_dir(path))
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return "\n".join(_describe_pickle_checkpoint(path))
    return "\n".join(_describe_safetensors(path))
