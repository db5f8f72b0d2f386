"""Small helpers every layer shares: atomic file writes, JSON of numpy values, the torch process group's size.

Kept apart so that a stage needing one of them never imports another stage for it.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from unmask.errors import UnmaskError

_UMASK = os.umask(0)
os.umask(_UMASK)

NOT_REGULAR = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket"}
"""What a path can be other than a regular file, in words."""


def check_replaceable(path: Path) -> None:
    """Refuse a path that is there but not a regular file: renaming a new file over it would put a
    regular file in the place of a device, a FIFO, a link or a folder's name."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (yet)
        return
    if not stat.S_ISREG(mode):
        kind = NOT_REGULAR.get(stat.S_IFMT(mode), "not a regular file")
        raise UnmaskError(f"{path} is {kind}; give the name of a new file or of a regular file to replace")


def check_writable(path: Path) -> None:
    """Refuse, before any work is done, a file ``atomic_path`` could not write: one that is not a
    regular file, or whose folder is not one or cannot be written (missing folders are made)."""
    path = Path(path)
    check_replaceable(path)
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UnmaskError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnmaskError(f"cannot write {path}: folder {folder} is not writable")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.
    Only a missing path or a regular file is replaced (``check_replaceable``), and a failure to
    write is reported under ``path``, the name the caller knows, never the temporary one."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as err:
            if err.filename != str(tmp_path):
                raise
            raise OSError(err.errno, err.strerror, str(path)) from None
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes files private; ours are meant to be shared
        try:
            os.replace(tmp_path, path)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=json_ready))


def json_ready(value: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars and arrays, and paths, as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def torch_world() -> tuple[int, int]:
    """(rank, number of processes) of the ``torch.distributed`` group this process trains in; (0, 1) alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
