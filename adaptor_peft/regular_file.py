"""Opening a file for reading only if it is a regular file, so no reader can block or read without end.

A FIFO would block ``open`` until a writer appears, and a character device (``/dev/zero``, also through a
symlink) never ends; both are refused here before a byte is read. The file is opened with ``O_NONBLOCK``
(which keeps ``open`` on a FIFO from blocking) and its type is taken from ``fstat`` of the open
descriptor, so the check and the read concern the same file.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = [
    "FileTooLargeError",
    "NotARegularFileError",
    "open_regular_file",
    "read_bounded",
    "regular_file_size",
]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotARegularFileError(OSError):
    """The path names a FIFO, device or socket (after symlinks), not a regular file."""


class FileTooLargeError(OSError):
    """A regular file holds more bytes than its reader accepts."""


def open_regular_file(path: str | os.PathLike) -> tuple[BinaryIO, int]:
    """(open binary file, its size in bytes) if ``path`` is a regular file after symlinks; else OSError.

    A directory raises IsADirectoryError, a FIFO, device or socket NotARegularFileError, a missing path
    FileNotFoundError; none of them reads or blocks.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise NotARegularFileError(errno.EINVAL, f"is {kind}, not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def regular_file_size(path: str | os.PathLike) -> int:
    """Size in bytes of ``path`` if it is a regular file (see open_regular_file); reads nothing."""
    f, size = open_regular_file(path)
    f.close()
    return size


def read_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (OSError otherwise: FileTooLargeError, ...).

    For small metadata files (state, manifest, recipe): a file swapped for a FIFO, ``/dev/zero`` or a
    sparse giant is refused before it is read, and at most ``max_bytes + 1`` bytes are ever read.
    """
    f, size = open_regular_file(path)
    with f:
        data = f.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:  # the file may grow between fstat and read
        raise FileTooLargeError(
            errno.EFBIG,
            f"holds {max(size, len(data)):,} bytes, more than the {max_bytes:,} accepted",
            os.fspath(path),
        )
    return data
