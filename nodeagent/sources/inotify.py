"""Directory change notification through Linux inotify (ctypes; no extra dependency).

The file source still rescans on a timer, so a missed event (or a platform without
inotify) only costs latency; inotify just lets a new manifest start its pod at once instead
of at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


class DirectoryWatch:
    """Sets ``changed`` whenever something in one directory changes. Best effort."""

    def __init__(self, directory: Path) -> None:
        self.changed = asyncio.Event()
        self._fd = -1
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            return
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        if libc.inotify_add_watch(fd, os.fsencode(directory), _MASK) < 0:
            os.close(fd)
            return
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._drain)

    @property
    def active(self) -> bool:
        return self._fd >= 0

    def _drain(self) -> None:
        try:
            while os.read(self._fd, 64 * 1024):
                pass
        except BlockingIOError:
            pass
        except OSError:
            self.close()  # the directory went away: fall back to the timer
        self.changed.set()

    async def wait(self, seconds: float) -> None:
        """Return on the next change, or after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), seconds)
        self.changed.clear()

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
