"""The adaptor header: the namespaced ``__metadata__`` fields of an adaptor file, and their validation.

Fields are strings (JSON where structured): format version, library version, the MambaAdaptorConfig,
the base model's architecture and constructor config, a fingerprint of the frozen base weights, the
tensor table and a content checksum over the metadata and every tensor's bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AdaptorFormatVersionError, AdaptorHeaderError, AdaptorMetadataError
from .safetensors_reader import RawSafetensors

if TYPE_CHECKING:  # parsing a header needs no torch (`adaptor-peft info` stays quick); digests do
    import torch

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


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
    from .fingerprint import tensor_bytes
    from .safetensors_reader import DTYPE_TAGS

    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != META_CONTENT_SHA256}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}|{DTYPE_TAGS.get(t.dtype, str(t.dtype))}|{list(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()
