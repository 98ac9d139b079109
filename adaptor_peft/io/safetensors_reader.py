"""Reading a safetensors file for the adaptor-file checks: header entries parsed, tensor data read lazily.

The container itself (UTF-8 JSON header, field types, known dtypes, data offsets that tile the data
exactly) is validated by the ``safetensors`` library; its refusal becomes an :class:`AdaptorHeaderError`.
This module adds only what safetensors lacks: file and length-prefix errors worded for users (also
what lets a header be read without the data), duplicate tensor names and unknown entry fields (both
of which it ignores), the dtypes adaptor_peft decodes, and the name of the tensor behind a refusal
that safetensors words without one (data cut off, a byte span that disagrees with dtype x shape,
trailing bytes).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from adaptor_peft.regular_file import NotARegularFileError, open_regular_file, regular_file_size

from .errors import AdaptorFileCorruptError, AdaptorFileError, AdaptorFileUnreadableError, AdaptorHeaderError

if TYPE_CHECKING:
    import torch

# safetensors dtype tag -> (torch dtype name, bytes per element): the dtypes adaptor_peft reads. Reading a
# header needs only the sizes, so torch is imported when DTYPES / DTYPE_TAGS are first used (PEP 562).
_DTYPE_NAMES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
#: safetensors dtype tag -> bytes per element
DTYPE_SIZES: dict[str, int] = {tag: size for tag, (_, size) in _DTYPE_NAMES.items()}
DTYPES: dict[str, tuple[torch.dtype, int]]  # tag -> (torch dtype, bytes per element), built on first use
DTYPE_TAGS: dict[torch.dtype, str]  # torch dtype -> tag, built on first use


def __getattr__(name: str) -> object:
    """DTYPES and DTYPE_TAGS, built (importing torch) on first use."""
    if name not in ("DTYPES", "DTYPE_TAGS"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    dtypes = {tag: (getattr(torch, dtype), size) for tag, (dtype, size) in _DTYPE_NAMES.items()}
    globals().update(DTYPES=dtypes, DTYPE_TAGS={dt: tag for tag, (dt, _) in dtypes.items()})
    return globals()[name]


# safetensors' own limit; checked before reading so a bogus length prefix never allocates much
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


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
    """A safetensors file that safetensors accepts, its header parsed (tensor data not read yet)."""

    path: Path
    data: bytes  # the length prefix and the header only: tensor data is read by decode(), per tensor
    file_size: int
    header_len: int
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]

    def decode(self) -> dict[str, torch.Tensor]:
        """All tensors, read one at a time by safetensors (its own checks wrapped as AdaptorFileError).

        Reads (pread) only the spans the validated header declares, into tensors that own their memory.
        """
        try:
            regular_file_size(self.path)  # the path may have been swapped for a FIFO or device since
            with safe_open(str(self.path), framework="pt", backend="pread") as f:
                return {name: f.get_tensor(name) for name in f.keys()}
        except NotARegularFileError as exc:
            raise AdaptorFileUnreadableError(
                self.path, f"{exc.strerror}; pass the path of a regular .safetensors adaptor file"
            ) from exc
        except Exception as exc:  # SafetensorError, or anything the decoder raises on bad bytes
            raise AdaptorFileCorruptError(self.path, f"safetensors cannot decode the file: {exc}") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _read(path: Path) -> tuple[bytes, int]:
    """(length prefix + header bytes, file size) of a regular file; the tensor data is not read."""
    try:
        f, size = open_regular_file(path)
        with f:
            data = f.read(8)
            if len(data) == 8:
                n = int.from_bytes(data, "little")
                if n <= min(size - 8, _MAX_HEADER_BYTES):
                    data += f.read(n)
            return data, size
    except FileNotFoundError as exc:
        raise AdaptorFileUnreadableError(path, "file not found") from exc
    except IsADirectoryError as exc:
        hint = (
            " (a peft adapter directory: load it with peft.PeftModel.from_pretrained(model, directory))"
            if (path / "adapter_config.json").is_file()
            else ""
        )
        raise AdaptorFileUnreadableError(path, f"is a directory, not an adaptor file{hint}") from exc
    except NotARegularFileError as exc:
        raise AdaptorFileUnreadableError(
            path, f"{exc.strerror}; pass the path of a regular .safetensors adaptor file"
        ) from exc
    except OSError as exc:
        raise AdaptorFileUnreadableError(path, f"cannot read the file: {exc}") from exc


def _header_len(path: Path, data: bytes, size: int) -> int:
    """The length prefix, checked against the file size (safetensors words this as 'invalid length')."""
    if size < 8:
        raise AdaptorFileUnreadableError(
            path, f"file has {size} bytes, fewer than the 8-byte safetensors length prefix", key="header"
        )
    header_len = int.from_bytes(data[:8], "little")
    if header_len > _MAX_HEADER_BYTES and size - 8 >= header_len:  # all there, but over the cap
        raise AdaptorHeaderError(
            path,
            f"the header has {header_len:,} bytes, over the {_MAX_HEADER_BYTES:,}-byte safetensors header "
            "limit (refused unread); not an adaptor file",
            key="header",
        )
    if header_len > min(size - 8, _MAX_HEADER_BYTES):
        raise AdaptorFileCorruptError(
            path,
            f"the length prefix announces a {header_len}-byte header but only {size - 8} bytes follow "
            "(truncated file, or not a safetensors file)",
            key="header",
        )
    return header_len


def _readable_entry(info: Any) -> bool:
    """Exactly the three fields, with a dtype adaptor_peft reads and integer shape and offsets."""
    if not isinstance(info, dict) or set(info) != _ENTRY_FIELDS:
        return False
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    return (
        isinstance(dtype, str)
        and dtype in DTYPE_SIZES
        and isinstance(shape, list)
        and all(_is_count(d) for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(o) for o in offsets)
        and offsets[0] <= offsets[1]
    )


def _name_the_fault(path: Path, header_bytes: bytes, body_len: int) -> AdaptorFileError | None:
    """The specific error for data spans that disagree with the header or the file size, if found.

    Checked from the header alone before safetensors maps the file (a header that leaves a sparse 10 GB
    file mostly unaccounted for is refused without touching it), and it names the tensor where
    safetensors says "incomplete metadata" both for cut-off data and for trailing bytes, and "invalid
    shape, data type, or offset" without saying which tensor. Entries are checked in header order;
    None (keep safetensors' own message) for anything else, such as a malformed entry or a gap.
    """
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    spans = []
    for name, info in header.items():
        if not _readable_entry(info):
            return None
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if end > body_len:
            return AdaptorFileCorruptError(
                path,
                f"tensor data ends at byte {end} but the file holds only {body_len} data bytes "
                "(truncated file?)",
                key=name,
            )
        need = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != need:
            return AdaptorHeaderError(
                path,
                f"header says dtype {dtype} shape {shape} ({need} bytes) but data_offsets {[begin, end]} "
                f"span {end - begin} bytes",
                key=name,
            )
        spans.append((begin, end))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            return None  # a gap or an overlap: safetensors' message names the tensor
        pos = end
    if pos != body_len:
        return AdaptorFileCorruptError(
            path,
            f"tensors cover {pos} data bytes but the file holds {body_len} (trailing bytes)",
            key="header",
        )
    return None


def read_safetensors(path: str | os.PathLike, header_only: bool = False) -> RawSafetensors:
    """Read a safetensors file that safetensors itself accepts, with its header parsed into entries.

    Only the length prefix and the header are read (checked against the file size, then by safetensors,
    which maps the file without reading its data); decode() reads the tensors. ``header_only`` is kept
    for callers that only describe the file: it changes nothing, as no data is read here either way.
    """
    path = Path(path)
    data, size = _read(path)
    header_len = _header_len(path, data, size)
    header_bytes = data[8 : 8 + header_len]
    fault = _name_the_fault(path, header_bytes, size - 8 - header_len)
    if fault is not None:  # spans that disagree with the file size: refused before the file is mapped
        raise fault
    try:
        # maps the file: checks the header, reads no data ("numpy": the check is the same, without torch)
        with safe_open(str(path), framework="numpy"):
            pass
    except OSError as exc:  # the file went away or became unreadable since it was read
        raise AdaptorFileUnreadableError(path, f"cannot read the file: {exc}") from exc
    except Exception as exc:  # SafetensorError: safetensors refuses the container
        raise AdaptorHeaderError(path, f"safetensors refuses the file: {exc}", key="header") from exc

    try:  # safetensors accepted it, so this is valid JSON; it keeps the last of duplicate keys, we refuse
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AdaptorHeaderError(path, f"header is not valid UTF-8 JSON ({exc})", key="header") from exc
    metadata = header.pop("__metadata__", None) or {}
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if set(info) != _ENTRY_FIELDS:  # safetensors ignores unknown fields
            raise AdaptorHeaderError(path, "entry must hold exactly dtype, shape and data_offsets", key=name)
        dtype, (begin, end) = info["dtype"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:  # safetensors knows more dtypes (F8, U16, ...) than adaptor files use
            raise AdaptorHeaderError(
                path, f"unknown dtype {dtype!r} (known: {sorted(DTYPE_SIZES)})", key=name
            )
        entries[name] = TensorEntry(dtype, tuple(info["shape"]), begin, end)
    return RawSafetensors(path, data, size, header_len, entries, metadata)
