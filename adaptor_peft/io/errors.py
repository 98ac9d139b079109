"""The errors of adaptor files: one AdaptorFileError subclass per way a file can be unusable.

Every message names the file and, where there is one, the key or field at fault.
"""

from __future__ import annotations

import os

from adaptor_peft.printable import printable


class AdaptorFileError(ValueError):
    """Base class: an adaptor file cannot be used; the message names the file and the key or field."""

    def __init__(self, path: str | os.PathLike, message: str, key: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        where = f" [{printable(key)}]" if key is not None else ""  # a key from the file may hold ESC
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
