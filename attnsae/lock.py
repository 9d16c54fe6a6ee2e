"""One run per output folder: an advisory lock (`fcntl.flock`) on `<folder>/.lock`, which also says who holds it.

The kernel drops the lock when its process dies (kill -9 included), so a killed run never leaves a stale lock,
and the next run resumes. A second run on a held folder is refused at once instead of racing the first.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path


class FolderBusy(RuntimeError):
    pass


@contextmanager
def hold(folder, what: str = "run", lock: str = ".lock"):
    """Hold `folder` (created if missing) for the duration of the block, or raise FolderBusy naming the holder.
    `lock`: the lock file's name (the ranks of one distributed run each hold their own)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(f"{folder} is in use by {holder}; wait for it to finish, or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"attnsae {what} (pid {os.getpid()} on {socket.gethostname()})".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock
