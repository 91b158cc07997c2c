"""An exclusive, crash-safe lock on a directory (flock: released when the process dies)."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockedError(RuntimeError):
    pass


class DirectoryLock:
    def __init__(self, directory: str | Path, what: str = "run"):
        self.path = Path(directory) / ".lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{self.what} directory {self.path.parent} is in use by {holder}; "
                "wait for it to finish or stop it before starting another run on it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
