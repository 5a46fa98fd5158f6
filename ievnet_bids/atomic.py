"""The one atomic writer: a temporary dot-file beside the destination, then ``os.replace``.

Readers never see a half-written file, and a failed write leaves no temporary file behind.
Everything that writes files atomically goes through :func:`staged` (pure standard library,
so any module can import it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged", "temp_beside", "write_bytes_atomic", "write_text_atomic"]


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new, empty, uniquely named dot-file in ``path``'s folder (which is created), with the
    permissions of an ordinary new file (``mkstemp`` makes it owner-only; outputs are shared
    with a lab, so they get the umask's mode, e.g. 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)
    return Path(name)


@contextmanager
def staged(
    path: str | os.PathLike[str], suffix: str = ".tmp", *, fsync: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    ``suffix`` lets writers that choose the format by extension (``.nii.gz``, ``.npz``,
    ``.png``) see the right one. With ``fsync`` the data reach the disk before the rename.
    The temporary file is removed whatever happens.
    """
    path = Path(path)
    tmp = temp_beside(path, suffix)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str], *, fsync: bool = False) -> Path:
    """Atomic binary write; returns ``path``."""
    with staged(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike[str], *, fsync: bool = False) -> Path:
    """Atomic text write (UTF-8); returns ``path``."""
    return write_bytes_atomic(text.encode("utf-8"), path, fsync=fsync)
