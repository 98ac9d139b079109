"""Adaptor files: one safetensors file holding the adaptor (+ head) tensors and a self-describing header.

One concept per module:

- :mod:`.errors`: the AdaptorFileError family (every message names the file and the key or field);
- :mod:`.safetensors_reader`: reading a safetensors file, validated by safetensors itself plus the
  checks it lacks;
- :mod:`.fingerprint`: the fingerprint of the frozen base weights that a file records;
- :mod:`.adaptor_header`: the adaptor metadata fields, their validation and the content checksum;
- :mod:`.adaptor_file`: save_adaptors / load_adaptors against a model;
- :mod:`.describe`: the human-readable summary behind ``adaptor-peft info``.
"""

from ..lazy_exports import lazy_dir as _lazy_dir
from ..lazy_exports import resolve_lazy as _resolve_lazy

#: public name -> the submodule that defines it; imported on first use (PEP 562), so reading a
#: header (`adaptor-peft info`) does not import the adaptor modules, and those not timm/peft.
_LAZY = {
    "ADAPTOR_HOOK_NAMES": "adaptor_file",
    "adaptor_backend": "adaptor_file",
    "base_architecture": "adaptor_file",
    "base_config": "adaptor_file",
    "build_adaptor_file": "adaptor_file",
    "load_adaptors": "adaptor_file",
    "read_adaptor_file": "adaptor_file",
    "save_adaptors": "adaptor_file",
    "FORMAT_VERSION": "adaptor_header",
    "META_BASE_ARCHITECTURE": "adaptor_header",
    "META_BASE_CONFIG": "adaptor_header",
    "META_BASE_FINGERPRINT": "adaptor_header",
    "META_CONFIG": "adaptor_header",
    "META_CONTENT_SHA256": "adaptor_header",
    "META_FORMAT_VERSION": "adaptor_header",
    "META_HEAD_KEYS": "adaptor_header",
    "META_INCLUDE_HEAD": "adaptor_header",
    "META_LIBRARY_VERSION": "adaptor_header",
    "META_PEFT_TYPE": "adaptor_header",
    "META_TENSORS": "adaptor_header",
    "META_USER": "adaptor_header",
    "NS": "adaptor_header",
    "REQUIRED_FIELDS": "adaptor_header",
    "SUPPORTED_FORMAT_VERSIONS": "adaptor_header",
    "AdaptorHeader": "adaptor_header",
    "content_digest": "adaptor_header",
    "parse_adaptor_header": "adaptor_header",
    "describe_file": "describe",
    "AdaptorChecksumError": "errors",
    "AdaptorConfigMismatchError": "errors",
    "AdaptorFileCorruptError": "errors",
    "AdaptorFileError": "errors",
    "AdaptorFileUnreadableError": "errors",
    "AdaptorFormatVersionError": "errors",
    "AdaptorHeaderError": "errors",
    "AdaptorMetadataError": "errors",
    "AdaptorTensorError": "errors",
    "BaseArchitectureMismatchError": "errors",
    "BaseFingerprintMismatchError": "errors",
    "BaseModelMismatchError": "errors",
    "MissingTensorError": "errors",
    "NonFiniteTensorError": "errors",
    "TensorDtypeMismatchError": "errors",
    "TensorShapeMismatchError": "errors",
    "UnexpectedTensorError": "errors",
    "DTYPE_TAGS": "safetensors_reader",
    "DTYPES": "safetensors_reader",
    "RawSafetensors": "safetensors_reader",
    "TensorEntry": "safetensors_reader",
    "read_safetensors": "safetensors_reader",
}


def __getattr__(name: str) -> object:
    """Import a public name's submodule on first use."""
    return _resolve_lazy(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    """The public names, loaded or not."""
    return _lazy_dir(globals(), _LAZY)


__all__ = [
    "ADAPTOR_HOOK_NAMES",
    "DTYPES",
    "DTYPE_TAGS",
    "FORMAT_VERSION",
    "META_BASE_ARCHITECTURE",
    "META_BASE_CONFIG",
    "META_BASE_FINGERPRINT",
    "META_CONFIG",
    "META_CONTENT_SHA256",
    "META_FORMAT_VERSION",
    "META_HEAD_KEYS",
    "META_INCLUDE_HEAD",
    "META_LIBRARY_VERSION",
    "META_PEFT_TYPE",
    "META_TENSORS",
    "META_USER",
    "NS",
    "REQUIRED_FIELDS",
    "SUPPORTED_FORMAT_VERSIONS",
    "AdaptorChecksumError",
    "AdaptorConfigMismatchError",
    "AdaptorFileCorruptError",
    "AdaptorFileError",
    "AdaptorFileUnreadableError",
    "AdaptorFormatVersionError",
    "AdaptorHeader",
    "AdaptorHeaderError",
    "AdaptorMetadataError",
    "AdaptorTensorError",
    "BaseArchitectureMismatchError",
    "BaseFingerprintMismatchError",
    "BaseModelMismatchError",
    "MissingTensorError",
    "NonFiniteTensorError",
    "RawSafetensors",
    "TensorDtypeMismatchError",
    "TensorEntry",
    "TensorShapeMismatchError",
    "UnexpectedTensorError",
    "adaptor_backend",
    "base_architecture",
    "base_config",
    "build_adaptor_file",
    "content_digest",
    "describe_file",
    "load_adaptors",
    "parse_adaptor_header",
    "read_adaptor_file",
    "read_safetensors",
    "save_adaptors",
]
