"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the agent rewrites while something may read it (a pod's /etc/hosts, the CNI
conflist containerd watches, the CNI result cache, the proxy's allocations, an image
archive) goes through here. The bytes go to a temporary file in the target's own
directory (a rename is atomic only within one filesystem), which is then renamed over the
target.

The temporary name is ``.<name>.<random>.tmp``: hidden, unique (the containers of a pod
start concurrently, and two writers of one target must not share a temporary file), and
ending in ``.tmp`` so that a directory watcher that loads by suffix (containerd loads
``*.conflist``, ``*.conf`` and ``*.json`` from its CNI directory) never loads it.

``fsync`` makes the content durable before the rename, for files whose loss after a power
cut would cost more than a rewrite (allocations, CNI results, the conflist). Files that
are rewritten at every use (a pod's hosts file) skip it. A failed write removes its
temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def open_atomic(target: Path, *, mode: int = 0o600, fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces target, with this mode, when the block ends without error.

    The target's directory must exist: its creation (and mode) is the caller's choice.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file_atomic(
    target: Path, data: bytes | str, *, mode: int = 0o600, fsync: bool = True
) -> None:
    """Replace target with data (str is written as UTF-8); see open_atomic."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with open_atomic(target, mode=mode, fsync=fsync) as f:
        f.write(payload)
