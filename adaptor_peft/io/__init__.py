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

from .adaptor_file import (
    ADAPTOR_HOOK_NAMES,
    adaptor_backend,
    base_architecture,
    base_config,
    build_adaptor_file,
    load_adaptors,
    read_adaptor_file,
    save_adaptors,
)
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
    NS,
    REQUIRED_FIELDS,
    SUPPORTED_FORMAT_VERSIONS,
    AdaptorHeader,
    content_digest,
    parse_adaptor_header,
)
from .describe import describe_file
from .errors import (
    AdaptorChecksumError,
    AdaptorConfigMismatchError,
    AdaptorFileCorruptError,
    AdaptorFileError,
    AdaptorFileUnreadableError,
    AdaptorFormatVersionError,
    AdaptorHeaderError,
    AdaptorMetadataError,
    AdaptorTensorError,
    BaseArchitectureMismatchError,
    BaseFingerprintMismatchError,
    BaseModelMismatchError,
    MissingTensorError,
    NonFiniteTensorError,
    TensorDtypeMismatchError,
    TensorShapeMismatchError,
    UnexpectedTensorError,
)
from .safetensors_reader import DTYPE_TAGS, DTYPES, RawSafetensors, TensorEntry, read_safetensors

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
