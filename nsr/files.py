"""Writing files safely: one atomic-write helper for every file nsr creates (``nsr.files``).

A file appears under its final name complete or not at all: the bytes go to a short
temporary name in the same folder (``.<8 random hex>.tmp``, so a target name of any legal
length still works), are flushed to disk, and the temporary file is renamed over the
target. New files get the permissions of ``open()`` (``0o666`` less the umask, e.g. 0644
under umask 022), unlike ``tempfile.mkstemp``, whose files are always 0600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TRIES = 16  # random names collide with probability ~2^-32 per try


def _open_temporary(folder: Path) -> tuple[Path, int]:
    """Create ``folder/.<8 hex>.tmp`` exclusively; returns its path and file descriptor."""
    for _ in range(_TRIES):
        tmp = folder / f".{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in {folder}: {_TRIES} random names were taken")


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file object) to ``path`` atomically.

    Raises ``FileNotFoundError`` when the folder does not exist, ``PermissionError`` when it
    is not writable, ``IsADirectoryError`` when ``path`` is a folder. Any failure, including
    ``KeyboardInterrupt``, removes the temporary file and leaves an existing ``path`` as it was.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        tmp, fd = _open_temporary(folder)
    except PermissionError as err:
        raise PermissionError(f"cannot write to {folder}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not reach the disk before the bytes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
