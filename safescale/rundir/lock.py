"""The run directory's writer lock: one process writes a run directory at a time.

Readers never take it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from safescale.rundir.layout import LOCK_FILE, RunDirError, RunLockedError

__all__ = ["RunLock"]


class RunLock:
    """The exclusive writer lock of a run directory (``RUN_DIR/.lock``, ``fcntl.flock``).

    The kernel releases it when the holder exits, however it exits (kill -9
    included), so a stale lock never blocks a resume. The file records the holder's
    pid and host for the message a second writer gets.

    Args:
        run_dir: the run directory (created if missing).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        #: the last :meth:`acquire` created the directory.
        self.created_dir = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock at once or raise.

        Raises:
            RunLockedError: another process holds it (the message names its pid and host).
            RunDirError: the run directory path is a file or a dangling symlink; the
                directory cannot be written (read-only, no permission); ``.lock`` is a
                directory or a symlink.
        """
        if self._fd is not None:
            return self
        if self.run_dir.is_symlink() and not self.run_dir.exists():
            raise RunDirError(
                f"{self.run_dir}: --out: is a symlink to {os.readlink(self.run_dir)}, which "
                "does not exist; create that directory or give another --out"
            )
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir}: --out: is a file, not a directory")
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"{error.filename or self.run_dir}: cannot create the run directory: "
                f"{error.strerror or error}"
            ) from None
        if self.path.is_symlink():
            raise RunDirError(
                f"{self.path}: is a symlink (to {os.readlink(self.path)}), not the run's lock "
                "file; remove it"
            )
        if self.path.is_dir():
            raise RunDirError(f"{self.path}: is a directory, not the run's lock file; remove it")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise RunDirError(
                f"{self.path}: cannot take the writer lock: {error.strerror or error} (run, "
                "detect train and replay write the run directory: copy it somewhere "
                "writable; trace and view --serve only read it)"
                if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
                else f"{self.path}: cannot take the writer lock: {error.strerror or error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = (
                    f"pid {info.get('pid')} on host {info.get('host')} (since {info.get('since')})"
                )
            except ValueError:
                who = "another process"
            raise RunLockedError(
                f"{self.run_dir}: locked: {who} is writing this run directory; wait for it to "
                "finish or use another --out"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays; an unlocked file means nothing)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
