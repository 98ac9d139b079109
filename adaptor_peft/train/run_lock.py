"""One writer per run directory: an advisory ``flock`` on ``run_dir/run.lock`` holding the owner's pid.

The kernel drops a ``flock`` when its owner dies, so a lock file left by a killed run is stale by
construction: the next run takes it over (and says so). Only the main process of a (DDP) launch takes
the lock; the other ranks share the run directory under it. Linux/POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "run.lock"


class RunDirError(FileExistsError):
    """The output directory holds a run that would be overwritten."""


class RunDirLockedError(RunDirError):
    """Another live process is writing to the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # 64 bytes at most; a FIFO does not block
        try:
            text = os.read(fd, 64).decode("ascii", errors="replace").strip()
        finally:
            os.close(fd)
    except OSError:
        return "?"
    return text or "?"


class RunDirLock:
    """An exclusive, non-blocking advisory lock on a run directory (``acquire`` / ``release``)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.stale_owner: str | None = None  # the pid a stale lock file named, when one was taken over

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        """Take the lock or raise RunDirLockedError naming the lock file and its owner's pid."""
        if self._fd is not None:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"{self.run_dir}: cannot create the run directory ({exc.strerror}); choose another output_dir"
            ) from None
        for _ in range(50):  # retried only when the file is replaced between open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RunDirError(
                    f"{self.path}: cannot open the run lock ({exc.strerror}); check its permissions"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(self.path)
                os.close(fd)
                raise RunDirLockedError(
                    f"{self.path}: run directory in use by process {owner}; "
                    "wait for it to finish or stop it, or use another output_dir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the previous owner removed it after we opened it
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
            if previous:
                self.stale_owner = previous
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return self
        raise RunDirLockedError(f"{self.path}: the run lock keeps changing; another process is contending")

    def stale_message(self) -> str | None:
        """A warning when the lock was taken over from a process that died without releasing it."""
        if self.stale_owner is None:
            return None
        try:
            pid = int(self.stale_owner)
        except ValueError:
            return f"{self.path}: took over a damaged lock file ({self.stale_owner!r})"
        if pid == os.getpid():
            return None
        state = "still exists but does not hold the lock" if _pid_alive(pid) else "is gone"
        return f"{self.path}: took over a stale lock of process {pid}, which {state}"

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
