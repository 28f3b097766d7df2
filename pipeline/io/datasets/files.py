"""What a dataset walk lists: every non-folder entry (regular file, FIFO, socket, device, dangling or looping link),
decided from the directory entry and ``lstat``/``stat`` only, never by opening it. The reader
(``pipeline.io.imageio.read_image``) then turns anything that is not a regular file into an error row naming it, so
nothing blocks and nothing is silently dropped."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["is_entry", "entry_path", "entry_size"]


def is_entry(path: str | Path) -> bool:
    """True when `path` exists as anything but a folder (a link to a folder counts as a folder); never opens it."""
    if not os.path.lexists(path):
        return False
    try:
        return not os.path.isdir(path)  # stat follows links; False for dangling links and loops
    except OSError:
        return True


def entry_path(path: str | Path) -> str:
    """The canonical path of (a link to) a regular file, else the entry's own absolute path, so that the error row of a
    broken link, loop, FIFO or device names what was listed."""
    return os.path.realpath(path) if os.path.isfile(path) else os.path.abspath(path)


def entry_size(path: str | Path) -> int:
    """Size in bytes of what `path` points to; 0 for a dangling link or loop (never raises)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
