"""Atomic file output: every JSON/NPZ/text file hessext writes goes through here.

A reader never sees a half-written file: the data goes to a temporary file in the same directory, which is
then renamed over the target (``os.replace`` is atomic on POSIX and Windows). The file gets the permissions
of an ordinary ``open(path, "w")``. Directories are created, never cleared.
"""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str encoded as UTF-8) to ``path`` atomically."""
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        # mkstemp's files are private (0600); give the permissions an ordinary open(path, "w") would
        # (0666 & ~umask), so that a report is as readable as the PNGs beside it.
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.fchmod(fd, 0o666 & ~umask)
        except OSError:  # pragma: no cover - a file system without POSIX permissions
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
